"""`mshare-lab exec` argument handling (the guests themselves are covered by the VM test)."""

from __future__ import annotations

import pytest

from mshare_lab.cli import build_parser
from mshare_lab.commands.deploy import split_exec_words
from mshare_lab.errors import ConfigError


def test_exec_words_with_a_guest_and_with_all():
    assert split_exec_words(["g1", "--", "uname", "-r"], False) == ("g1", ["uname", "-r"])
    assert split_exec_words(["--", "uname", "-r"], True) == (None, ["uname", "-r"])
    assert split_exec_words(["uptime"], True) == (None, ["uptime"])


@pytest.mark.parametrize("words, all_guests, message", [
    ([], False, "name a guest or give --all"),
    (["--", "uname"], False, "name a guest or give --all"),
    (["g1", "--"], False, "no command given"),
    ([], True, "no command given"),
])
def test_exec_words_errors_say_what_to_do(words, all_guests, message):
    with pytest.raises(ConfigError, match=message) as caught:
        split_exec_words(words, all_guests)
    assert "mshare-lab exec" in str(caught.value)


def test_exec_options_before_the_command_are_parsed_and_after_it_are_kept():
    args = build_parser().parse_args(["exec", "--all", "--timeout", "5", "--", "ls", "-l", "--all"])
    assert args.all and args.timeout == 5.0
    assert split_exec_words(args.words, args.all) == (None, ["ls", "-l", "--all"])
