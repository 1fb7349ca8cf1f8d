"""The SQLite results store: round trip, filters, migrations from an older file, threads."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from mshare_lab.errors import NotFoundError
from mshare_lab.results import store as store_mod
from mshare_lab.results.store import ResultStore, ResultsFileError


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as s:
        yield s


def full_record(record_factory):
    record = record_factory(pte_ratio=1.07, region_pagetable_bytes=56_000_000, sharing_verified=False,
                            kernel_release="6.1.0-28-cloud-amd64", latency_us={"p50": 12.5, "p99": 80},
                            oom_kills={"clients_killed": 0}, errors=[], schema="mshare-lab/result",
                            version=1, started_at=1_800_000_000, resources={"coordinator_pid": 321},
                            timeseries=[{"t_s": 0.0, "clients": 0}, {"t_s": 1.0, "clients": 100}])
    record.kernel_metadata = {"release": "6.1.0-28-cloud-amd64", "mechanisms": {"shmem": {}}}
    record.timeseries = {"t_s": [0.0, 0.5, 1.0], "pagetables_bytes": [4096, 2e6, 5.6e7]}
    record.console_log = "/var/lib/mshare-lab/runs/x/console.log"
    record.expectation_failures = ["pte_ratio: expected at most 1.0, measured 1.07"]
    record.attempts = 2
    return record


def test_add_get_round_trip(store, record_factory):
    record = full_record(record_factory)
    run_id = store.add(record)
    assert record.run_id == run_id and run_id.startswith("20270115-")   # UTC start time of the record
    got = store.get(run_id)
    assert got.scenario == record.scenario
    assert got.scenario_id == "debian-6.1/shmem/256M/x100/ram4G#1"
    for name in ("outcome", "reason", "result", "kernel_metadata", "console_log", "started_at",
                 "finished_at", "guest_seconds", "attempts", "expectation_failures"):
        assert getattr(got, name) == getattr(record, name), name
    assert got.timeseries == {"pagetables_bytes": [[0.0, 4096.0], [0.5, 2e6], [1.0, 5.6e7]]}


def test_metrics_are_flattened_numbers(store, record_factory):
    run_id = store.add(full_record(record_factory))
    assert store.metrics(run_id) == {
        "latency_us.p50": 12.5, "latency_us.p99": 80.0, "oom_kills.clients_killed": 0.0,
        "pte_ratio": 1.07, "region_pagetable_bytes": 56_000_000.0}


def test_timeseries_keep_monitor_and_workload_series(store, record_factory):
    run_id = store.add(full_record(record_factory))
    series = store.timeseries(run_id)
    assert series["pagetables_bytes"] == [(0.0, 4096.0), (0.5, 2e6), (1.0, 5.6e7)]
    assert series["workload.clients"] == [(0.0, 0.0), (1.0, 100.0)]


def test_filters_and_order(store, record_factory):
    store.add(record_factory(kernel="b", started_at=3.0))
    store.add(record_factory(kernel="a", started_at=1.0, outcome="oom"))
    store.add(record_factory(kernel="a", mechanism="sysv", started_at=2.0, repeat=2))
    assert [r.scenario.kernel for r in store.runs()] == ["a", "a", "b"]
    assert [r.outcome for r in store.runs(kernel="a")] == ["oom", "completed"]
    assert len(store.runs(mechanism="sysv")) == 1 and len(store.runs(outcome="oom")) == 1
    assert len(store.runs(scenario="a/sysv/256M/x100/ram4G#2")) == 1
    assert len(store.runs(scenario="a/sysv/256M/x100/ram4G")) == 1         # point id
    assert len(store.runs(scenario="a/*")) == 2                              # glob
    assert len(store.runs(limit=2)) == 2
    assert store.kernels().keys() == {"a", "b"}


def test_unknown_run_is_not_found(store):
    with pytest.raises(NotFoundError, match="no run 'nope'"):
        store.get("nope")
    with pytest.raises(NotFoundError):
        store.metrics("nope")


def test_new_file_has_the_latest_schema(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as s:
        assert s.schema_version == store_mod.SCHEMA_VERSION == len(store_mod.MIGRATIONS)
        mode = s._conn().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_v1_file_from_an_older_schema_is_migrated(tmp_path, record_factory):
    path = tmp_path / "old.sqlite"
    # what mshare-lab with schema v1 wrote: its DDL and one run, no point id or attempts yet
    conn = sqlite3.connect(path)
    conn.executescript(store_mod.MIGRATIONS[0].script())
    record = record_factory(kernel="debian-6.1", pte_ratio=1.1)
    conn.execute("INSERT INTO runs(run_id, scenario_id, kernel, mechanism, sga, clients, ram, repeat, outcome,"
                 " started_at, finished_at, guest_seconds, scenario, result) VALUES"
                 " ('old-1', ?, 'debian-6.1', 'shmem', ?, 100, ?, 1, 'completed', 1.0, 2.0, 1.0, ?, ?)",
                 (record.scenario_id, 256 << 20, 4 << 30, store_mod.scenario_to_json(record.scenario),
                  '{"pte_ratio": 1.1}'))
    conn.execute("INSERT INTO metrics VALUES ('old-1', 'pte_ratio', 1.1)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    with ResultStore(path) as s:
        assert s.schema_version == store_mod.SCHEMA_VERSION
        old = s.get("old-1")
        assert old.attempts == 1 and old.expectation_failures == [] and old.result == {"pte_ratio": 1.1}
        # v2 back-filled the point id from the scenario id
        assert [r.run_id for r in s.runs(scenario="debian-6.1/shmem/256M/x100/ram4G")] == ["old-1"]
        new_id = s.add(record_factory(kernel="debian-6.1", repeat=2))
        assert {r.run_id for r in s.runs()} == {"old-1", new_id}
        assert s.timeseries("old-1") == {}


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {store_mod.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ResultsFileError, match="newer than this mshare-lab"):
        ResultStore(path)


def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not sqlite at all, just some text that is long enough" * 20)
    with pytest.raises(ResultsFileError, match="not a results database"):
        ResultStore(path)


def test_concurrent_adds_from_threads(store, record_factory):
    errors: list[BaseException] = []
    ids: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(25):
                run_id = store.add(record_factory(kernel=f"k{n}", repeat=i + 1, pte_ratio=float(i)))
                with lock:
                    ids.append(run_id)
        except BaseException as exc:   # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 200 and store.count() == 200
    assert len(store.runs(kernel="k3")) == 25
    # every run kept its own metric row
    assert store._conn().execute("SELECT count(*) FROM metrics").fetchone()[0] == 200


def test_failed_add_leaves_nothing(store, record_factory):
    record = record_factory(pte_ratio=1.0)
    record.kernel_metadata = {"bad": object()}      # not JSON: the insert fails before commit
    with pytest.raises(TypeError):
        store.add(record)
    assert store.count() == 0 and record.run_id is None
    store.add(record_factory())                      # the lock was released
    assert store.count() == 1


def test_run_id_clash_is_retried(store, record_factory, monkeypatch):
    # runs that start in the same second share the id prefix; force the random part to clash once
    drawn = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(store_mod.secrets, "token_hex", lambda n: next(drawn))
    first = store.add(record_factory(repeat=1))
    second = store.add(record_factory(repeat=2))
    assert first.endswith("-aaaaaaaa") and second.endswith("-bbbbbbbb") and store.count() == 2
