"""A damaged results store is refused at open; a run the store cannot take is kept and imported.

Real SQLite files: a store with real records, then 8 KiB of garbage written into the
middle of a copy (what a torn write or a stray dd does).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mshare_lab.lab.runner import _store_or_keep
from mshare_lab.results.record_file import read_records
from mshare_lab.results.store import ResultsFileError, ResultStore

MATRIX = """\
defaults: {kernels: debian-6.1, duration: 1, ram: 1G}
matrix:
  - {mechanisms: shmem, sga: 32M, clients: 10}
"""


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mshare_lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _records(make_record, n: int):
    series = {"t_s": [float(t) for t in range(200)], "qemu_rss_bytes": [float(t << 20) for t in range(200)]}
    for i in range(n):
        record = make_record(clients=100 + i, started_at=1_800_000_000.0 + i, pte_ratio=1.0, pagetables_delta_bytes=i)
        record.timeseries = series
        yield record


@pytest.fixture
def real_store(tmp_path, record_factory) -> Path:
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        for record in _records(record_factory, 40):
            store.add(record)
        store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size > 64 << 10, "the store must be large enough to have a middle"
    return path


def _damage(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(8192))


def test_a_store_damaged_in_the_middle_is_refused_at_open(real_store, tmp_path):
    copy = tmp_path / "damaged.sqlite"
    shutil.copy(real_store, copy)
    _damage(copy)
    with pytest.raises(ResultsFileError, match="is damaged"):
        ResultStore(copy)
    shown = _cli("results", "list", "--results", str(copy))
    assert shown.returncode == 2, shown.stderr
    assert "is damaged" in shown.stderr and "Traceback" not in shown.stderr
    # the undamaged original still opens and holds every run
    with ResultStore(real_store) as store:
        assert store.count() == 40


def test_a_matrix_refuses_a_damaged_store_before_any_guest_starts(real_store, tmp_path):
    copy = tmp_path / "damaged.sqlite"
    shutil.copy(real_store, copy)
    _damage(copy)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX)
    started = time.monotonic()
    run = _cli("run", str(matrix), "--results", str(copy))
    assert run.returncode == 2, run.stderr
    assert "is damaged" in run.stderr and "Traceback" not in run.stderr
    assert "boot" not in run.stderr, "a guest was started"
    assert time.monotonic() - started < 30


def test_a_store_missing_a_table_is_an_error_not_a_traceback(real_store):
    conn = sqlite3.connect(real_store)
    conn.execute("DROP TABLE metrics")
    conn.commit()
    conn.close()
    shown = _cli("results", "show", "nope", "--results", str(real_store))
    assert shown.returncode == 2, shown.stderr
    assert "has no table metrics" in shown.stderr and "Traceback" not in shown.stderr


def test_a_run_the_store_cannot_take_is_kept_as_json_and_imported(real_store, tmp_path, record_factory):
    broken = tmp_path / "broken.sqlite"
    shutil.copy(real_store, broken)
    store = ResultStore(broken)
    # damaged while a matrix holds it open: every page after the schema turned to garbage
    size = broken.stat().st_size
    with broken.open("r+b") as f:
        f.seek(8192)
        f.write(os.urandom(size - 8192))
    record = next(_records(record_factory, 1))
    record.result = {"pte_ratio": 0.01, "client_cost": {"per_client_bytes": 123456}}
    said: list[str] = []
    workdir = tmp_path / "run"
    # as in run_matrix: the scenario's worker thread stores its record (its own connection)
    worker = threading.Thread(target=_store_or_keep, args=(store, record, record.scenario, workdir, said.append))
    try:
        worker.start()
        worker.join(60)
    finally:
        store.close()
    kept = workdir / "record.json"
    assert kept.exists(), said
    assert any(f"mshare-lab results import {kept}" in line for line in said), said
    back = read_records(kept)
    assert [r.scenario_id for r in back] == [record.scenario_id]
    fresh = tmp_path / "fresh.sqlite"
    imported = _cli("results", "import", str(kept), "--results", str(fresh))
    assert imported.returncode == 0, imported.stderr
    with ResultStore(fresh) as good:
        (run,) = good.runs()
        assert run.scenario_id == record.scenario_id and run.outcome == record.outcome
        assert good.metrics(run.run_id)["client_cost.per_client_bytes"] == 123456
        assert len(good.timeseries(run.run_id)["qemu_rss_bytes"]) == 200
    # the kept record has no run id: it gets one from its content, so importing it again
    # (a second try after a partial failure) does not add the run twice
    again = _cli("results", "import", str(kept), "--results", str(fresh))
    assert again.returncode == 0 and "0 run(s) imported" in again.stdout and "1 skipped" in again.stdout, again
    with ResultStore(fresh) as good:
        assert [r.run_id for r in good.runs()] == [run.run_id]


def test_import_refuses_a_file_that_is_not_a_record(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"schema": "something-else"}')
    out = _cli("results", "import", str(bad), "--results", str(tmp_path / "r.sqlite"))
    assert out.returncode == 2 and "not an mshare-lab/results document" in out.stderr
    assert not (tmp_path / "r.sqlite").exists()
