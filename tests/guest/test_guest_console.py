"""Serial files as virtlogd writes them: rotated past 2 MiB, followed line by line."""

from __future__ import annotations

from mshare_lab.guest import console


def test_rotated_parts_are_read_oldest_first(tmp_path):
    log = tmp_path / "console.log"
    (tmp_path / "console.log.1").write_bytes(b"first\r\nsec")
    (tmp_path / "console.log.0").write_bytes(b"ond\n")
    log.write_bytes(b"third \xff\n")
    assert console.read_text(log) == "first\nsecond\nthird \ufffd\n"
    assert console.tail(log, 2) == "second\nthird \ufffd"
    console.remove_all(log)
    assert list(tmp_path.iterdir()) == []
    assert console.read_text(log) == ""


def test_follower_hands_out_complete_lines_across_a_rotation(tmp_path):
    log = tmp_path / "console.log"
    follower = console.LineFollower(log)
    assert follower.new_lines() == []
    log.write_bytes(b"one\ntw")
    assert follower.new_lines() == ["one"]
    with log.open("ab") as handle:
        handle.write(b"o\nfo")
    log.rename(tmp_path / "console.log.0")      # what virtlogd does at max_size
    log.write_bytes(b"ur\nfive\n")
    assert follower.new_lines() == ["two", "four", "five"]
    assert follower.new_lines() == []
