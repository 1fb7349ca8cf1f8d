"""Sizes and option declarations: one declaration, same validation on CLI and in files."""

import argparse

import pytest

from mshare_lab import options
from mshare_lab.errors import ConfigError, Location
from mshare_lab.units import format_size, parse_size, short_size


@pytest.mark.parametrize("text,expected", [
    ("4096", 4096), ("256M", 256 << 20), ("1G", 1 << 30), ("300g", 300 << 30),
    ("1.5G", 3 << 29), ("512MiB", 512 << 20), (" 2T ", 2 << 40),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12Q", "", "G", "-1M", "0.3K"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_and_short_size():
    assert format_size(878.90625 * (1 << 30)) == "878.9 GiB"
    assert short_size(1 << 30) == "1G" and short_size(256 << 20) == "256M" and short_size(1000) == "1000"


def _parser():
    parser = argparse.ArgumentParser(prog="t", exit_on_error=True)
    options.add_arguments(parser)
    return parser


def test_cli_defaults_build_a_spec():
    spec = options.WorkloadSpec.from_args(_parser().parse_args(["--sga", "1G", "--clients", "7"]))
    assert spec.sga == 1 << 30 and spec.clients == 7 and spec.mechanism == "shmem"


@pytest.mark.parametrize("argv,named", [
    (["--sga", "12Q"], "--sga"), (["--clients", "0"], "--clients"),
    (["--mechanism", "magic"], "--mechanism"), (["--populate", "2"], "--populate"),
])
def test_cli_rejects_with_the_argument_named(argv, named, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    assert f"argument {named}" in capsys.readouterr().err


def test_mapping_errors_carry_the_location():
    with pytest.raises(ConfigError) as exc:
        options.parse_mapping({"clients": "many"}, locate=lambda key: Location("m.yaml", 7))
    assert str(exc.value).startswith("m.yaml:7: clients:")
