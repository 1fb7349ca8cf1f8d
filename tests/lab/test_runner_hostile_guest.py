"""A guest is untrusted: a micro guest whose init writes hostile frames to ttyS1.

The guest runs the kernel under test, so what it sends is input, not truth: frame names
that are paths, a payload larger than announced, a JSON bomb as the result.  The run must
end as a record, write nothing outside its run directory, and keep every malformed frame
as evidence.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mshare_lab import frames
from mshare_lab.guest import testing
from mshare_lab.guest.libvirt_driver import LibvirtDriver
from mshare_lab.lab.runner import run_scenario
from mshare_lab.lab.scenario import GuestShape, Scenario
from mshare_lab.options import WorkloadSpec

pytestmark = pytest.mark.vm


def _frame(name: str, payload: bytes, size: int | None = None) -> str:
    body = base64.b64encode(payload).decode()
    lines = [body[i:i + 76] for i in range(0, len(body), 76)]
    size = len(payload) if size is None else size
    return "\n".join([f"{frames.BEGIN} {name} {size} {hashlib.sha256(payload).hexdigest()}", *lines,
                      f"{frames.END} {name}"]) + "\n"


HOSTILE = [
    ("../../../ESCAPED-BY-GUEST", b"written by the guest\n"),
    ("sub/dir/ESCAPED", b"into a missing directory\n"),
    ("/tmp/ESCAPED-ABSOLUTE", b"absolute\n"),
]


def test_hostile_frames_are_evidence_never_paths(tmp_path):
    work = testing.lab_scratch("hostile-")
    try:
        stream = "".join(_frame(name, payload) for name, payload in HOSTILE)
        stream += _frame("result", b"[" * 5000 + b"]" * 5000)                       # JSON bomb
        stream += _frame("dmesg", b"short", size=3)                                 # size lie
        stream += _frame("status", json.dumps({"workload_exit": 0}).encode())
        init = ("cat > /dev/ttyS1 <<'MSHARE_EOF'\n" + stream + "MSHARE_EOF\n"
                "echo HOSTILE-DONE\npoweroff -f")
        base = testing.tiny_initrd(init, work / "hostile-base.gz")
        scenario = Scenario(kernel="debian-6.1", workload=WorkloadSpec(sga=16 << 20, clients=2, duration=1),
                            guest=GuestShape(memory=512 << 20, vcpus=1, timeout=120))
        rundir = work / "a" / "b" / "c" / "run"
        with LibvirtDriver() as driver:
            try:
                record = run_scenario(scenario, driver=driver, workdir=rundir, base_initrd=base, max_attempts=1)
            finally:
                driver.remove_scratch()
        # nothing outside the run directory, no directory made from a name
        assert not list(work.rglob("ESCAPED*")), list(work.rglob("ESCAPED*"))
        assert not Path("/tmp/ESCAPED-ABSOLUTE.txt").exists()
        assert not (rundir / "sub").exists()
        assert sorted(p.name for p in rundir.iterdir() if p.suffix in (".txt", ".json")) == \
            ["broken-frames.json", "status.json"], list(rundir.iterdir())
        # every malformed frame is kept as evidence, names escaped, reasons said
        evidence = json.loads((rundir / "broken-frames.json").read_text())
        reasons = {e["name"]: e["reason"] for e in evidence}
        for name, _ in HOSTILE:
            assert "never used as a file name" in reasons[name], reasons
        assert "checksum mismatch" in reasons["dmesg"]
        assert "nested deeper than" in reasons["result"]
        # the run is a record: no result document was trusted
        assert record.result is None
        assert record.outcome != "completed", record
    finally:
        shutil.rmtree(work, ignore_errors=True)
