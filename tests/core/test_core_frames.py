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
