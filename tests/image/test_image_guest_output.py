"""The host-side reader of a micro guest's ttyS1: good, cut and corrupted streams."""

from __future__ import annotations

import json

import pytest

from mshare_lab import frames
from mshare_lab.errors import NotFoundError
from mshare_lab.image.micro import read_guest_output

RESULT = {"schema": "mshare-lab/result", "outcome": "completed", "clients_attached": 20}
STATUS = {"workload_exit": 0, "probe_exit": 0, "uptime_s": 12.5, "error": None}


def _stream() -> str:
    return "".join([
        frames.encode("probe", json.dumps({"mechanisms": {"shmem": True}}).encode()),
        frames.encode("result", json.dumps(RESULT).encode()),
        frames.encode("dmesg", b"[    0.000000] Linux version 6.1.0\n" * 200),
        frames.encode("status", json.dumps(STATUS).encode()),
    ])


def test_complete_stream_gives_every_frame(tmp_path):
    serial = tmp_path / "ttyS1"
    # the guest's raw tty may add CRs and kernel lines may interleave: neither matters
    serial.write_text("noise before\n" + _stream().replace("\n", "\r\n"))
    out = read_guest_output(serial)
    assert out.complete
    assert sorted(out.frames) == ["dmesg", "probe", "result", "status"]
    assert out.result == RESULT
    assert out.status == STATUS and out.workload_exit == 0
    assert out.dmesg.count("Linux version") == 200
    assert out.broken == [] and out.errors == []


def test_truncated_stream_gives_a_broken_frame_not_a_crash(tmp_path):
    text = _stream()
    cut = text.index("MSHARE-LAB-BEGIN dmesg") + 300   # the guest died while sending dmesg
    serial = tmp_path / "ttyS1"
    serial.write_text(text[:cut])
    out = read_guest_output(serial)
    assert not out.complete
    assert out.result == RESULT                      # what arrived before the cut is kept
    assert out.dmesg is None and out.status is None
    assert [b.name for b in out.broken] == ["dmesg"]
    assert "ended inside" in out.broken[0].reason


def test_corrupted_payload_fails_its_checksum(tmp_path):
    lines = _stream().splitlines()
    begin = next(i for i, line in enumerate(lines) if line.startswith("MSHARE-LAB-BEGIN result"))
    body = lines[begin + 1]
    lines[begin + 1] = ("A" if body[0] != "A" else "B") + body[1:]   # one flipped character
    serial = tmp_path / "ttyS1"
    serial.write_text("\n".join(lines) + "\n")
    out = read_guest_output(serial)
    assert out.result is None
    assert [b.name for b in out.broken] == ["result"]
    assert "checksum" in out.broken[0].reason
    assert out.status == STATUS and not out.complete


def test_frame_with_invalid_json_is_reported(tmp_path):
    serial = tmp_path / "ttyS1"
    serial.write_text(frames.encode("result", b"{not json") + frames.encode("status", b"{}"))
    out = read_guest_output(serial)
    assert out.result is None
    assert len(out.errors) == 1 and out.errors[0].startswith("result: not JSON")
    assert not out.complete


def test_binary_garbage_and_empty_file(tmp_path):
    serial = tmp_path / "ttyS1"
    serial.write_bytes(b"\xff\xfe\x00MSHARE-LAB-BEGIN x 3 zz\n\x00\x01")
    out = read_guest_output(serial)
    assert out.frames == {} and not out.complete
    serial.write_bytes(b"")
    assert read_guest_output(serial).frames == {}


def test_missing_serial_file_is_not_found(tmp_path):
    with pytest.raises(NotFoundError):
        read_guest_output(tmp_path / "never-written")


def test_a_stream_split_by_log_rotation_is_stitched(tmp_path):
    # virtlogd renames a full serial file to .0 (older to .1) and goes on in a new file
    text = _stream()
    cut1, cut2 = len(text) // 3, 2 * len(text) // 3
    serial = tmp_path / "serial.log"
    (tmp_path / "serial.log.1").write_text(text[:cut1])
    (tmp_path / "serial.log.0").write_text(text[cut1:cut2])
    serial.write_text(text[cut2:])
    out = read_guest_output(serial)
    assert out.complete and out.result == RESULT and out.broken == []
