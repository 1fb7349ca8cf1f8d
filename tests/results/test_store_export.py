"""CSV and JSON export of stored runs, and the results CLI over a real store file."""

from __future__ import annotations

import csv
import io
import json

from mshare_lab.cli import main
from mshare_lab.results import export
from mshare_lab.results.store import ResultStore


def two_runs(record_factory):
    a = record_factory(kernel="debian-6.1", pte_ratio=1.05, region_pagetable_bytes=54_000_000,
                       latency_us={"p50": 10, "p99": 90.5}, sharing_verified=False)
    a.timeseries = {"t_s": [0, 1], "pagetables_bytes": [100, 200]}
    b = record_factory(kernel="mshare-v3", outcome="oom", reason="oom-killer: 12 clients", repeat=2,
                       throughput_tps=500.0)
    b.expectation_failures = ["outcome: expected completed, measured oom", "pte_ratio: missing"]
    return [a, b]


def test_csv_has_one_row_per_run_and_metric_columns(record_factory):
    out = io.StringIO()
    assert export.write_csv(two_runs(record_factory), out) == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 2
    header = out.getvalue().splitlines()[0].split(",")
    assert header[:len(export.RUN_COLUMNS)] == list(export.RUN_COLUMNS)
    assert header[len(export.RUN_COLUMNS):] == ["latency_us.p50", "latency_us.p99", "pte_ratio",
                                                "region_pagetable_bytes", "throughput_tps"]
    a, b = rows
    assert a["scenario_id"] == "debian-6.1/shmem/256M/x100/ram4G#1" and a["pte_ratio"] == "1.05"
    assert a["region_pagetable_bytes"] == "54000000" and a["latency_us.p99"] == "90.5"
    assert a["throughput_tps"] == "" and b["pte_ratio"] == ""
    assert b["outcome"] == "oom" and b["reason"] == "oom-killer: 12 clients" and b["repeat"] == "2"
    assert b["expectation_failures"] == "outcome: expected completed, measured oom; pte_ratio: missing"
    assert a["sga"] == str(256 << 20) and a["wall_seconds"] == "30" and a["overhead_seconds"] == "5"


def test_json_holds_full_records(record_factory):
    out = io.StringIO()
    export.write_json(two_runs(record_factory), out)
    doc = json.loads(out.getvalue())
    assert doc["schema"] == "mshare-lab/results" and doc["version"] == 1
    a, b = doc["runs"]
    assert a["result"]["latency_us"] == {"p50": 10, "p99": 90.5} and a["result"]["sharing_verified"] is False
    assert a["metrics"] == {"latency_us.p50": 10.0, "latency_us.p99": 90.5, "pte_ratio": 1.05,
                            "region_pagetable_bytes": 54000000.0}
    assert a["timeseries"] == {"pagetables_bytes": [[0.0, 100.0], [1.0, 200.0]]}
    assert a["scenario"]["workload"]["clients"] == 100 and a["scenario"]["guest"]["memory"] == 4 << 30
    assert b["expectation_failures"][0].startswith("outcome: expected completed")


def test_cli_list_show_export_compare(tmp_path, record_factory, capsys):
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        ids = [store.add(r) for r in two_runs(record_factory)]

    assert main(["results", "list", "--results", str(db)]) == 0
    out = capsys.readouterr().out
    assert ids[0] in out and ids[1] in out and "2 run(s)" in out and "2 failed" in out

    assert main(["results", "list", "--results", str(db), "--outcome", "oom"]) == 0
    out = capsys.readouterr().out
    assert ids[1] in out and ids[0] not in out

    assert main(["results", "show", ids[0], "--results", str(db)]) == 0
    out = capsys.readouterr().out
    assert "debian-6.1/shmem/256M/x100/ram4G#1" in out and "pte_ratio" in out and "51.5 MiB" in out

    assert main(["results", "show", "no-such-run", "--results", str(db)]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err

    target = tmp_path / "out" / "runs.csv"
    # a missing directory is an error, not created silently
    assert main(["results", "export", "--csv", "-o", str(target), "--results", str(db)]) == 2
    assert "does not exist" in capsys.readouterr().err and not target.parent.exists()
    target.parent.mkdir()
    assert main(["results", "export", "--csv", "-o", str(target), "--results", str(db)]) == 0
    assert len(target.read_text().splitlines()) == 3 and not list(target.parent.glob("*.partial"))

    assert main(["results", "export", "--json", "--results", str(db), "--kernel", "mshare-v3"]) == 0
    assert [r["kernel"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["mshare-v3"]

    assert main(["compare", "--results", str(db), "--metric", "oom"]) == 0
    out = capsys.readouterr().out
    assert "0/1 runs" in out and "1/1 runs" in out and "baseline" in out


def test_cli_missing_results_file_is_a_user_error(tmp_path, capsys):
    assert main(["results", "list", "--results", str(tmp_path / "none.sqlite")]) == 2
    assert "no results file" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()


def test_interrupted_export_leaves_no_file(tmp_path, record_factory, capsys, monkeypatch):
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        for r in two_runs(record_factory):
            store.add(r)
    real_write = export.write_csv

    def write_then_interrupt(records, out):
        real_write(records, out)
        out.flush()
        raise KeyboardInterrupt          # Ctrl-C after half the work was on disk

    monkeypatch.setattr(export, "write_csv", write_then_interrupt)
    target = tmp_path / "runs.csv"
    assert main(["results", "export", "--csv", "-o", str(target), "--results", str(db)]) == 130
    # no export file, no partial file, and no -wal/-shm: the store was closed too
    assert [p.name for p in tmp_path.iterdir()] == ["r.sqlite"]
