"""``--help`` for every subcommand, and the installed ``gradsentry`` console script.

The library's parser (``detectors.cli``) has the offline subcommands; the console script
adds ``serve`` from the service package on top of the same parser.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import pytest

from detectors.cli import main
from detectors.cli.main import build_parser

LIBRARY_COMMANDS = ("fit", "eval", "demo", "attack", "bench")


def _console_script() -> Callable[[list[str]], int]:
    """The function the installed ``gradsentry`` script calls."""
    scripts = importlib.metadata.entry_points(group="console_scripts")
    (entry,) = [e for e in scripts if e.name == "gradsentry"]
    return entry.load()


def test_library_parser_lists_the_offline_subcommands() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert tuple(sub.choices) == LIBRARY_COMMANDS


@pytest.mark.parametrize("command", LIBRARY_COMMANDS)
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gradsentry {command}")
    assert "-h, --help" in out


@pytest.mark.parametrize("command", [*LIBRARY_COMMANDS, "serve"])
def test_console_script_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _console_script()([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: gradsentry {command}")


def test_fit_help_names_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    for option in ("--model", "--weights", "--data", "--challenge", "--out", "--overwrite"):
        assert option in out


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _console_script()(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in (*LIBRARY_COMMANDS, "serve"):
        assert command in out


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: gradsentry" in capsys.readouterr().err


def test_serve_with_a_missing_config_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any server starts: exit code 2 and one line naming the file."""
    missing = tmp_path / "missing.yaml"
    code = _console_script()(["serve", "--config", str(missing)])
    captured = capsys.readouterr()
    assert code == 2
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("gradsentry serve: error: ")
    assert str(missing) in line
    assert list(tmp_path.iterdir()) == []
