"""Frames survive what a serial line does to them: noise, truncation, corruption."""

import json

from mshare_lab import frames


def test_round_trip_amid_kernel_noise():
    payload = json.dumps({"outcome": "completed", "n": 3}).encode()
    stream = "[    1.0] random: crng init done\n" + frames.encode("result", payload) + "[    2.0] reboot\n"
    found = frames.frames_by_name(stream.splitlines())
    assert found["result"].json() == {"outcome": "completed", "n": 3}


def test_corrupted_payload_is_reported_broken_not_trusted():
    text = frames.encode("result", b"x" * 300)
    lines = text.splitlines()
    lines[1] = lines[1][:-4] + "AAAA"
    decoded = list(frames.decode(lines))
    assert len(decoded) == 1 and isinstance(decoded[0], frames.BrokenFrame)
    assert "checksum" in decoded[0].reason


def test_truncated_frame_is_broken_and_earlier_frames_survive():
    text = frames.encode("probe", b"{}") + frames.encode("result", b"y" * 500)
    cut = text[: len(text) - 40]
    decoded = list(frames.decode(cut.splitlines()))
    assert isinstance(decoded[0], frames.Frame) and decoded[0].name == "probe"
    assert isinstance(decoded[1], frames.BrokenFrame) and decoded[1].name == "result"


def test_carriage_returns_from_a_tty_are_ignored():
    text = frames.encode("dmesg", b"line one\nline two\n").replace("\n", "\r\n")
    assert frames.frames_by_name(text.split("\n"))["dmesg"].text() == "line one\nline two\n"


def test_progress_lines_are_parsed_and_garbage_skipped():
    lines = ['MSHARE-LAB-PROGRESS {"phase": "attach", "attached": 10}',
             "MSHARE-LAB-PROGRESS {not json",
             'junk MSHARE-LAB-PROGRESS {"phase": "done"}']
    assert [e["phase"] for e in frames.progress_events(lines)] == ["attach", "done"]


# --- hostile guests: names, sizes and JSON are untrusted -----------------------------------

def _raw_frame(name: str, payload: bytes, size: int | None = None) -> list[str]:
    """A frame with any name (the encoder refuses bad ones; a hostile guest does not)."""
    import base64
    import hashlib
    return [f"{frames.BEGIN} {name} {len(payload) if size is None else size} {hashlib.sha256(payload).hexdigest()}",
            base64.b64encode(payload).decode(), f"{frames.END} {name}"]


def test_a_frame_name_that_is_a_path_is_broken_evidence_never_a_frame():
    for name in ("../../../ESCAPED", "sub/dir", "/etc/passwd", "..", ".hidden", "a" * 65, "x..y"):
        decoded = list(frames.decode(_raw_frame(name, b"{}")))
        assert len(decoded) == 1 and isinstance(decoded[0], frames.BrokenFrame), name
        assert "never used as a file name" in decoded[0].reason
    assert frames.frames_by_name(_raw_frame("result-2.v1_x", b"{}"))["result-2.v1_x"].payload == b"{}"


def test_an_oversized_or_overlong_frame_is_refused_without_buffering_it():
    huge = list(frames.decode(_raw_frame("dmesg", b"x", size=frames.MAX_PAYLOAD + 1)))
    assert isinstance(huge[0], frames.BrokenFrame) and "more than" in huge[0].reason
    # announces 3 bytes, then sends a megabyte of base64: cut off, not kept in memory
    lines = _raw_frame("result", b"abc")
    flood = [lines[0]] + ["QUFB" * 1000] * 300 + [lines[2]]
    decoded = list(frames.decode(flood))
    assert isinstance(decoded[0], frames.BrokenFrame) and "longer than" in decoded[0].reason


def test_deeply_nested_json_is_refused_not_a_recursion_error():
    bomb = b"[" * 100000 + b"]" * 100000
    frame = frames.frames_by_name(_raw_frame("result", bomb))["result"]
    try:
        frame.json()
    except frames.UntrustedJSONError as exc:
        assert "nested deeper" in str(exc)
    else:
        raise AssertionError("a JSON bomb was parsed")
    # brackets inside strings are text, not nesting
    assert frames.loads_bounded('{"a": "' + "[" * 200 + '"}') == {"a": "[" * 200}


def test_progress_lines_that_are_huge_or_not_objects_are_skipped():
    lines = ["MSHARE-LAB-PROGRESS " + '{"pad": "' + "x" * frames.MAX_PROGRESS_LINE + '"}',
             "MSHARE-LAB-PROGRESS [1, 2]", "MSHARE-LAB-PROGRESS " + "[" * 5000,
             'MSHARE-LAB-PROGRESS {"phase": "ok"}']
    assert list(frames.progress_events(lines)) == [{"phase": "ok"}]
