"""The shared store on a real PostgreSQL server (tests/pg_helpers.py): the same schema and API as
SQLite, migrations, concurrent writer processes, import of a SQLite store, compare, errors."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mshare_lab import cli
from mshare_lab.results import store as store_mod
from mshare_lab.results.backend_postgres import VERSION_TABLE, glob_to_regex
from mshare_lab.results.location import ResultsLocation, redact, results_location
from mshare_lab.results.store import ResultStore

from pg_helpers import free_port
from store_helpers import make_record, rich_record


def _same(a, b) -> None:
    for name in ("run_id", "scenario", "outcome", "reason", "result", "kernel_metadata", "timeseries",
                 "console_log", "artifacts_dir", "started_at", "finished_at", "guest_seconds", "attempts",
                 "expectation_failures", "kernel_log", "host", "host_failures"):
        assert getattr(a, name) == getattr(b, name), name


# --- schema -------------------------------------------------------------------------------

def test_a_fresh_database_is_migrated_to_the_current_schema(pg_url, postgres_server):
    with ResultStore(pg_url) as store:
        assert store.dialect == "postgresql"
        assert store.schema_version == store_mod.SCHEMA_VERSION == 4
        assert store.count() == 0 and store.runs() == [] and store.kernels() == {}
        assert store.path is None and store.location == ResultsLocation(url=pg_url)
    with postgres_server.connect(pg_url) as conn:
        tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = 'public'")}
        assert tables == {"kernels", "runs", "metrics", "timeseries", VERSION_TABLE}
        assert conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchall() == [(4,)]
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'runs'").fetchall())
        # 64-bit as in SQLite: a 4 GiB guest fits, times keep their microseconds
        assert types["ram"] == "bigint" and types["started_at"] == "double precision"
        assert types["host"] == "text" and types["host_failures"] == "text"


def test_two_processes_opening_a_fresh_database_at_once_migrate_it_once(pg_url, postgres_server):
    # each reads the same start time and spins until it, so they open within milliseconds
    code = textwrap.dedent(f"""
        import sys, time
        from mshare_lab.results.store import ResultStore
        start = float(sys.stdin.read())
        while time.time() < start:
            pass
        with ResultStore({pg_url!r}) as s:
            print(s.schema_version)
    """)
    start = f"{time.time() + 1.5}"
    children = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [child.communicate(start, timeout=60) for child in children]
    assert [c.returncode for c in children] == [0] * 4, outputs
    assert [out.strip() for out, _ in outputs] == ["4"] * 4
    with postgres_server.connect(pg_url) as conn:
        assert conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchall() == [(4,)]


def test_a_v3_sqlite_file_migrates_to_v4_with_no_host(tmp_path):
    path = tmp_path / "v3.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("".join(m.script() for m in store_mod.MIGRATIONS[:3]))
    record = make_record()
    conn.execute("INSERT INTO runs(run_id, scenario_id, point_id, kernel, mechanism, sga, clients, ram, repeat,"
                 " outcome, scenario) VALUES ('v3-1', ?, ?, 'debian-6.1', 'shmem', 1, 1, 1, 1, 'completed', ?)",
                 (record.scenario_id, record.scenario.point_id, store_mod.scenario_to_json(record.scenario)))
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with ResultStore(path) as store:
        assert store.schema_version == 4
        old = store.get("v3-1")
        assert old.host is None and old.host_failures == []
        new = rich_record(1)
        store.add(new)
        assert store.get(new.run_id).host == new.host
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(runs)")]
    assert columns[-2:] == ["host", "host_failures"]


def test_a_database_of_a_newer_schema_is_refused(pg_url, postgres_server):
    ResultStore(pg_url).close()
    with postgres_server.connect(pg_url) as conn:
        conn.execute(f"UPDATE {VERSION_TABLE} SET version = 99")
    with pytest.raises(store_mod.ResultsFileError, match="schema version 99, newer"):
        ResultStore(pg_url)


# --- the API --------------------------------------------------------------------------------

def test_postgres_returns_the_same_records_as_sqlite(tmp_path, pg_url):
    records = [rich_record(i, kernel=("debian-6.1", "v6.12-mshare")[i % 2], mechanism=("shmem", "hugetlb")[i % 3 == 0])
               for i in range(8)]
    records.append(make_record(outcome="hang", reason="no report in 600 s", started_at=1_800_000_100.0))
    with ResultStore(tmp_path / "r.sqlite") as lite, ResultStore(pg_url) as pg:
        for record in records:
            lite_id = lite.add(record)
            pg.add_existing(lite.get(lite_id))          # the same run id in both
        assert pg.count() == lite.count() == 9
        pg_runs, lite_runs = pg.runs(), lite.runs()
        assert [r.run_id for r in pg_runs] == [r.run_id for r in lite_runs]
        for a, b in zip(pg_runs, lite_runs):
            _same(a, b)
            assert pg.metrics(a.run_id) == lite.metrics(a.run_id)
            assert pg.timeseries(a.run_id) == lite.timeseries(a.run_id)
        assert pg.kernels() == lite.kernels()
        assert pg.kernels()["v6.12-mshare"]["release"] == "6.1.0-28-cloud-amd64"
        point = records[0].scenario.point_id
        for filters in ({"kernel": "v6.12-mshare"}, {"mechanism": "hugetlb"}, {"outcome": "hang"},
                        {"scenario": point}, {"scenario": "debian-6.1/*#[12]"}, {"scenario": "*/hugetlb/*"},
                        {"scenario": "*#[!1]"}, {"scenario": "*#[^1]"}, {"scenario": "debian-6.?/shmem/*"},
                        {"limit": 3}, {"kernel": "debian-6.1", "limit": 2}):
            got = [r.run_id for r in pg.runs(**filters)]
            assert got == [r.run_id for r in lite.runs(**filters)], filters
        assert len(pg.runs(scenario="*#[12]")) == 7
        with pytest.raises(store_mod.NotFoundError, match="no run 'nope' in postgresql://"):
            pg.get("nope")


def test_glob_translation_matches_sqlite_glob(postgres_server):
    conn = sqlite3.connect(":memory:")
    pg = postgres_server.connect(postgres_server.url())
    names = ["debian-6.1/shmem/256M/x100/ram4G#1", "a.b", "a+b", "a]b", "a[b", "x#2", "A.B", "a\\b"]
    for pattern in ("*", "a.b", "a?b", "[a]*", "a[]]b", "a[!.]b", "a[^.]b", "*#[0-9]", "a[b", "A*", "a\\b",
                    "debian-6.?/*/x1[0-9]0/*"):
        lite = [n for n in names if conn.execute("SELECT ? GLOB ?", (n, pattern)).fetchone()[0]]
        import re
        regex = glob_to_regex(pattern)
        # the translated regex as Python reads it (PostgreSQL's ARE agrees for these constructs;
        # like SQLite, '[!' is a bracket with '!' in it, '[^' the negation)
        mine = [n for n in names if re.search(regex, n)]
        assert mine == lite, (pattern, regex)
        server = [n for n in names if pg.execute("SELECT %s ~ %s", (n, regex)).fetchone()[0]]
        assert server == lite, (pattern, regex)
    pg.close()


def test_a_run_id_clash_draws_a_new_id_on_both_backends(tmp_path, pg_url, monkeypatch):
    # forced: the random suffix is 32 bits, a real clash is too rare to wait for
    for location in (tmp_path / "r.sqlite", pg_url):
        with ResultStore(location) as store:
            first = store.add(make_record())
            drawn = iter([first, first, "20270115-080000-00000001"])
            monkeypatch.setattr(store_mod, "new_run_id", lambda started_at: next(drawn))
            second = store.add(make_record())
            monkeypatch.undo()
            assert second == "20270115-080000-00000001"
            assert store.count() == 2 and store.get(second).run_id == second
            # the failed attempts left nothing behind
            assert len(store.runs()) == 2


# --- concurrent writers -------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{results_tests!r}]
    from store_helpers import rich_record
    from mshare_lab.results.store import ResultStore
    n, who = int(sys.argv[1]), sys.argv[2]
    with ResultStore({url!r}) as store:
        start = float(sys.stdin.read())
        while time.time() < start:
            pass
        t = time.monotonic()
        for i in range(n):
            # every run starts in the same second: run ids share their prefix, only the suffix differs
            record = rich_record(i, kernel=("debian-6.1", "shared-k")[i % 2], started_at=1_800_000_000.0)
            record.reason = who
            record.started_at = 1_800_000_000.0
            store.add(record)
        print(time.monotonic() - t)
""")


def test_two_processes_writing_at_once_lose_and_duplicate_nothing(pg_url, postgres_server, repo_root):
    n = 150
    code = WRITER.format(tests=str(repo_root / "tests"), results_tests=str(repo_root / "tests" / "results"), url=pg_url)
    ResultStore(pg_url).close()
    children = [subprocess.Popen([sys.executable, "-c", code, str(n), who], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("w1", "w2")]
    start = f"{time.time() + 2.0}"
    outputs = [child.communicate(start, timeout=300) for child in children]
    assert [c.returncode for c in children] == [0, 0], outputs
    seconds = max(float(out.strip()) for out, _ in outputs)
    print(f"\n{2 * n} runs from 2 concurrent writers in {seconds:.2f} s: {2 * n / seconds:.0f} runs/s")
    with ResultStore(pg_url) as store:
        runs = store.runs()
        assert len(runs) == store.count() == 2 * n
        assert len({r.run_id for r in runs}) == 2 * n
        assert sorted(r.reason for r in runs) == ["w1"] * n + ["w2"] * n
        assert set(store.kernels()) == {"debian-6.1", "shared-k"}
    with postgres_server.connect(pg_url) as conn:
        per_run = len(store_mod.flatten_metrics(rich_record(0).result))
        assert conn.execute("SELECT count(*) FROM metrics").fetchone()[0] == 2 * n * per_run
        # 1 monitor series x 3 points + 1 workload series x 2 points per run
        assert conn.execute("SELECT count(*) FROM timeseries").fetchone()[0] == 2 * n * 5
        assert conn.execute("SELECT count(*), count(DISTINCT seq) FROM runs").fetchone() == (2 * n, 2 * n)


def test_threads_of_one_store_write_postgres_at_once(pg_url):
    with ResultStore(pg_url) as store:
        errors = []

        def work(k: int) -> None:
            try:
                for i in range(20):
                    store.add(rich_record(i, kernel=f"k{k}"))
            except Exception as exc:   # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and store.count() == 80
        assert {k: len(store.runs(kernel=k)) for k in store.kernels()} == {f"k{k}": 20 for k in range(4)}


# --- the CLI over a PostgreSQL store ------------------------------------------------------------

def _sqlite_store(path, n: int = 6):
    with ResultStore(path) as store:
        for i in range(n):
            store.add(rich_record(i, kernel=("debian-6.1", "v6.12-mshare")[i % 2]))
    return path


def test_results_import_of_a_sqlite_store_twice_adds_nothing_the_second_time(tmp_path, pg_url, capsys):
    local = _sqlite_store(tmp_path / "local.sqlite", 6)
    started = time.monotonic()
    assert cli.main(["results", "import", str(local), "--results", pg_url]) == 0
    took = time.monotonic() - started
    out = capsys.readouterr().out
    assert f"{local}: 6 run(s) added, 0 skipped (already in {pg_url})" in out
    print(f"\nimport of 6 runs: {took:.2f} s")
    assert cli.main(["results", "import", str(local), "--results", pg_url]) == 0
    assert f"{local}: 0 run(s) added, 6 skipped" in capsys.readouterr().out
    # a second local store with two new runs and the six old ones
    with ResultStore(local) as store:
        store.add(rich_record(7))
        store.add(rich_record(8))
    assert cli.main(["results", "import", str(local), "--results", pg_url]) == 0
    assert f"{local}: 2 run(s) added, 6 skipped" in capsys.readouterr().out
    with ResultStore(local) as lite, ResultStore(pg_url) as pg:
        assert pg.count() == 8
        assert [r.run_id for r in pg.runs()] == [r.run_id for r in lite.runs()]
        for a, b in zip(pg.runs(), lite.runs()):
            _same(a, b)
            assert pg.metrics(a.run_id) == lite.metrics(a.run_id)
            assert pg.timeseries(a.run_id) == lite.timeseries(a.run_id)


def test_the_json_export_keeps_the_host_and_import_reads_it_back(tmp_path, pg_url, capsys):
    local = _sqlite_store(tmp_path / "l.sqlite", 2)
    exported = tmp_path / "runs.json"
    assert cli.main(["results", "export", "--json", "-o", str(exported), "--results", str(local)]) == 0
    assert cli.main(["results", "import", str(exported), "--results", pg_url]) == 0
    with ResultStore(local) as lite, ResultStore(pg_url) as pg:
        assert [(r.host, r.host_failures) for r in pg.runs()] == [(r.host, r.host_failures) for r in lite.runs()]
        assert any(r.host_failures for r in pg.runs())
        # the export's run ids are kept, so a second import of the same file adds nothing
        assert [r.run_id for r in pg.runs()] == [r.run_id for r in lite.runs()]
    capsys.readouterr()
    assert cli.main(["results", "import", str(exported), "--results", pg_url]) == 0
    assert "0 run(s) imported" in capsys.readouterr().out
    with ResultStore(pg_url) as pg:
        assert pg.count() == 2


def test_results_import_into_sqlite_and_of_a_missing_store(tmp_path, capsys):
    local = _sqlite_store(tmp_path / "a.sqlite", 3)
    target = tmp_path / "b.sqlite"
    for expected in ("3 run(s) added, 0 skipped", "0 run(s) added, 3 skipped"):
        assert cli.main(["results", "import", str(local), "--results", str(target)]) == 0
        assert expected in capsys.readouterr().out
    assert cli.main(["results", "import", str(tmp_path / "missing.sqlite"), "--results", str(target)]) == 2
    assert "no results file at" in capsys.readouterr().err
    assert cli.main(["results", "import", str(target), "--results", str(target)]) == 2
    assert "is the --results store itself" in capsys.readouterr().err


def test_list_show_export_compare_and_report_read_a_postgres_store(tmp_path, pg_url, capsys):
    with ResultStore(pg_url) as store:
        for i in range(6):
            store.add(rich_record(i, kernel=("debian-6.1", "v6.12-mshare")[i % 2]))
        some = store.runs()[0].run_id
    assert cli.main(["results", "list", "--results", pg_url]) == 0
    assert "6 run(s)" in capsys.readouterr().out
    assert cli.main(["results", "show", some, "--results", pg_url]) == 0
    assert f"run        {some}" in capsys.readouterr().out
    assert cli.main(["results", "export", "--csv", "--results", pg_url]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 7
    assert cli.main(["compare", "--by", "kernel", "--metric", "pte_ratio", "--results", pg_url]) == 0
    table = capsys.readouterr().out
    assert "v6.12-mshare" in table and "warning" not in table
    assert cli.main(["compare", "--format", "email", "--metric", "pte_ratio", "--results", pg_url]) == 0
    email = capsys.readouterr().out
    assert pg_url in email and email.rstrip().endswith("--format email")
    out = tmp_path / "report.html"
    assert cli.main(["report", "--results", pg_url, "-o", str(out)]) == 0
    html = out.read_text()
    assert "v6.12-mshare" in html and pg_url in html


# --- host mixes -------------------------------------------------------------------------------

def _host(accelerator: str | None, cpu: str | None = "Broadwell") -> dict:
    host = {"name": f"h-{accelerator}-{cpu}", "uri": "qemu:///system", "kernel": "6.1.0", "hostname": "x"}
    if accelerator:
        host["accelerator"] = accelerator
    if cpu:
        host["cpu_model"] = cpu
    return host


def _mixed_store(location, hosts: list[dict | None]):
    with ResultStore(location) as store:
        for i, host in enumerate(hosts):
            record = rich_record(i, kernel=("debian-6.1", "v6.12-mshare")[i % 2])
            record.host = host
            store.add(record)


def test_compare_warns_when_runs_mix_accelerators_or_cpu_models(pg_url, tmp_path, capsys):
    _mixed_store(pg_url, [_host("kvm"), _host("kvm"), _host("tcg"), _host("kvm", "Skylake-Server"), None])
    assert cli.main(["compare", "--metric", "pte_ratio", "--results", pg_url]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0] == ("warning: the compared runs mix accelerators: kvm (3 runs), tcg (1 run), unknown (1); "
                        "times and throughput are not comparable across them")
    assert lines[1] == ("warning: the compared runs mix host CPU models: Broadwell (3 runs), Skylake-Server "
                        "(1 run), unknown (1); times and throughput are not comparable across them")
    assert cli.main(["compare", "--format", "email", "--metric", "pte_ratio", "--results", pg_url]) == 0
    email = capsys.readouterr().out
    assert email.startswith("WARNING: the compared runs mix accelerators: kvm (3 runs), tcg (1 run),\n"
                            "  unknown (1); times and throughput are not comparable across them\n"
                            "WARNING: the compared runs mix host CPU models: Broadwell (3 runs),\n")
    assert "Skylake-Server" in email and all(len(line) <= 72 for line in email.splitlines())
    out = tmp_path / "r.html"
    assert cli.main(["report", "--results", pg_url, "-o", str(out)]) == 0
    html = out.read_text()
    assert html.count('<p class="warning">The compared runs mix accelerators: kvm (3 runs), tcg (1 run)') == 2
    assert "host CPU models: Broadwell (3 runs), Skylake-Server (1 run)" in html


def test_runs_without_a_host_or_of_one_kind_do_not_warn(tmp_path, capsys):
    from mshare_lab.results.compare import compare, host_warnings
    same = [rich_record(i) for i in range(3)]
    old = [rich_record(i, host={}) for i in range(2)]
    for r in old:
        r.host = None
    assert host_warnings(same + old) == []
    assert host_warnings(old) == []
    # an infra-error run on another host says nothing about the kernel and is left out of the check
    broken = rich_record(9, host=_host("tcg"))
    broken.outcome = "infra-error"
    assert compare(same + [broken], metrics=["pte_ratio"]).warnings == []
    _mixed_store(tmp_path / "r.sqlite", [_host("kvm"), None, _host("kvm")])
    assert cli.main(["compare", "--metric", "pte_ratio", "--results", str(tmp_path / "r.sqlite")]) == 0
    assert "warning" not in capsys.readouterr().out


# --- errors and secrets ---------------------------------------------------------------------

def test_an_unreachable_server_is_exit_2_with_host_port_and_what_to_do(capsys, tmp_path):
    local = _sqlite_store(tmp_path / "l.sqlite", 1)
    port = free_port()       # nothing listens there
    url = f"postgresql://lab:s3cret-pw@127.0.0.1:{port}/results"
    for argv in (["results", "list", "--results", url], ["compare", "--results", url],
                 ["results", "import", str(local), "--results", url],
                 ["report", "--results", url, "-o", str(tmp_path / "r.html")]):
        started = time.monotonic()
        assert cli.main(argv) == 2, argv
        assert time.monotonic() - started < 15
        err = capsys.readouterr().err
        assert err.startswith(f"mshare-lab: error: cannot open the PostgreSQL results store "
                              f"postgresql://lab:***@127.0.0.1:{port}/results (127.0.0.1 port {port}): ")
        assert "Connection refused" in err or "connection refused" in err.lower(), err
        assert "start the server" in err and "Traceback" not in err
        assert "s3cret-pw" not in err


def test_a_wrong_password_or_database_is_a_clear_error_without_the_password(postgres_server, capsys):
    url = postgres_server.url("no_such_db", password="hunter22")
    assert cli.main(["results", "list", "--results", url]) == 2
    err = capsys.readouterr().err
    assert 'database "no_such_db" does not exist' in err
    assert "hunter22" not in err and "postgres:***@127.0.0.1" in err


def test_a_password_is_never_printed(pg_url, capsys, tmp_path):
    # trust authentication accepts any password: the URL carries one and works
    url = pg_url.replace("postgres@", "postgres:topsecret@")
    local = _sqlite_store(tmp_path / "l.sqlite", 2)
    assert cli.main(["results", "import", str(local), "--results", url]) == 0
    assert cli.main(["compare", "--format", "email", "--metric", "pte_ratio", "--results", url]) == 0
    assert cli.main(["results", "show", "nope", "--results", url]) == 2
    captured = capsys.readouterr()
    assert "topsecret" not in captured.out + captured.err
    assert "postgres:***@" in captured.out and "postgres:***@" in captured.err
    assert str(results_location(url)) == url.replace("topsecret", "***")


def test_redaction_and_the_location_decision(tmp_path):
    assert redact("postgresql://u:p%40ss@db.lab:5433/r") == "postgresql://u:***@db.lab:5433/r"
    assert redact("postgresql://u@db/r?password=x&sslmode=require") == "postgresql://u@db/r?password=***&sslmode=require"
    assert redact("postgres://db/r") == "postgres://db/r"
    assert results_location("postgres://db/r").is_postgres
    assert results_location(str(tmp_path / "x.sqlite")) == ResultsLocation(path=tmp_path / "x.sqlite")
    assert results_location(None).path.name == "results.sqlite"
    assert results_location("postgresql://u@h/lab").name == "lab"
    assert results_location("postgresql://u@h/lab").report_path().name == "lab.html"
    from pathlib import Path

    from mshare_lab.errors import UserError
    with pytest.raises(UserError, match="read as a file path"):
        results_location(Path("postgresql://u@h/lab"))


def test_a_store_reconnects_after_the_server_restarted():
    # its own server: restarting the session's would cut the other tests' connections
    from pg_helpers import PG_BIN, PostgresServer

    import psycopg
    server = PostgresServer().start()
    try:
        url = server.database()
        with ResultStore(url) as store:
            store.add(rich_record(1))
            restarted = server._as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(server.data), "-m", "fast", "-w", "restart",
                "-o", f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.dir}",
                "-l", str(server.dir / "server.log"))
            assert restarted.returncode == 0, restarted.stderr
            # the run in flight fails (the runner keeps it as record.json), the next one is stored
            with pytest.raises(psycopg.OperationalError):
                store.add(rich_record(2))
            store.add(rich_record(3))
            assert store.count() == 2
    finally:
        data = server.data
        server.stop()
    # stopped and removed: no server process of that cluster, no directory
    assert not data.exists()
    assert subprocess.run(["pgrep", "-f", str(data)], capture_output=True).returncode == 1


def test_predict_reads_the_measured_client_cost_from_a_postgres_store(pg_url, capsys):
    with ResultStore(pg_url) as store:
        ids = []
        for i, per_client in enumerate((280 << 10, 300 << 10, 320 << 10)):
            record = make_record(kernel="k-measured", started_at=1_800_000_000.0 + i,
                                 client_cost={"per_client_bytes": per_client})
            ids.append(store.add(record))
    assert cli.main(["predict", "--sga", "16M", "--clients", "1700", "--ram", "512M", "--kernel", "k-measured",
                     "--results", pg_url]) == 0
    out = capsys.readouterr().out
    assert "300.0 KiB per client (measured, median of 3 run(s): " in out
    assert all(run_id in out for run_id in ids)
