"""Schema v3: each run keeps its kernel-log summary; older files migrate with none."""

from __future__ import annotations

import io
import sqlite3

from mshare_lab.commands.results import write_record
from mshare_lab.lab.kernel_log import scan
from mshare_lab.lab.scenario import GuestShape
from mshare_lab.results import store as store_mod
from mshare_lab.results.store import ResultStore

DMESG = ("mshare-lab: phase attach\n"
         "BUG: Bad rss-counter state mm:00000000c0ffee00 type:MM_SHMEMPAGES val:-5020\n"
         "BUG: Bad rss-counter state mm:00000000c0ffee00 type:MM_SHMEMPAGES val:-5021\n"
         "mshare-lab: phase done\n"
         "BUG: non-zero pgtables_bytes on freeing mm: 4096\n")


def test_kernel_log_round_trips_and_results_show_prints_it(tmp_path, record_factory):
    record = record_factory(kernel="my-mshare", mechanism="ptshare", pte_ratio=0.017)
    record.kernel_log = scan(DMESG, "")
    with ResultStore(tmp_path / "r.sqlite") as s:
        run_id = s.add(record)
        back = s.get(run_id)
        assert back.kernel_log == record.kernel_log
        assert back.kernel_log.counts == {"bad-rss-counter": 2, "pgtables-bytes": 1}
        out = io.StringIO()
        write_record(back, s.metrics(run_id), {}, out)
    text = out.getvalue()
    assert "kernel log 2 bad-rss-counter (first in attach), 1 pgtables-bytes (first in done) [from dmesg]" in text
    assert "  bad-rss-counter: 2 line(s), first in attach:" in text
    assert "    | BUG: Bad rss-counter state mm:00000000c0ffee00 type:MM_SHMEMPAGES val:-5020" in text


def test_a_v2_file_migrates_to_v3_with_no_kernel_log(tmp_path, record_factory):
    path = tmp_path / "v2.sqlite"
    conn = sqlite3.connect(path)
    for script in (m.script() for m in store_mod.MIGRATIONS[:2]):
        conn.executescript(script)
    record = record_factory()
    conn.execute("INSERT INTO runs(run_id, scenario_id, point_id, kernel, mechanism, sga, clients, ram, repeat,"
                 " outcome, scenario) VALUES ('v2-1', ?, ?, 'debian-6.1', 'shmem', 1, 1, 1, 1, 'completed', ?)",
                 (record.scenario_id, record.scenario.point_id, store_mod.scenario_to_json(record.scenario)))
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with ResultStore(path) as s:
        assert s.schema_version == store_mod.SCHEMA_VERSION == 4
        assert s.get("v2-1").kernel_log is None


def test_guest_sysctls_survive_the_store_as_a_tuple(tmp_path, record_factory):
    record = record_factory()
    record.scenario = type(record.scenario)(record.scenario.kernel, record.scenario.workload,
                                            GuestShape(sysctls=["debug.mshare_lab_trigger=now:warn"]))
    with ResultStore(tmp_path / "r.sqlite") as s:
        back = s.get(s.add(record))
    assert back.scenario.guest.sysctls == ("debug.mshare_lab_trigger=now:warn",)
    hash(back.scenario.guest)
