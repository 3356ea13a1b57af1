"""The command line's one-line errors: `PanopticError` subclasses and `OSError`s end in exit code 2."""

from __future__ import annotations

import argparse
import errno

import pytest

from panoptic import cli
from panoptic.data.coco import PanopticDataError
from panoptic.engine.checkpoint import CheckpointError
from panoptic.engine.config import ConfigError
from panoptic.errors import PanopticError, describe_os_error


@pytest.mark.parametrize("cls", [ConfigError, CheckpointError, PanopticDataError])
def test_user_errors_share_one_base_and_stay_value_errors(cls):
    assert issubclass(cls, PanopticError) and issubclass(cls, ValueError)


def test_describe_os_error_names_path_cause_and_fix():
    text = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/out/a.json"))
    assert text == "/out/a.json: No space left on device (free some disk space or write somewhere else)"
    assert describe_os_error(OSError(errno.EIO, "I/O error")) == "I/O error"


@pytest.mark.parametrize("exc, expected", [
    (ConfigError("lr must be > 0"), "panoptic demo: error: lr must be > 0"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"),
     "panoptic demo: error: /ro/x: Read-only file system (the file system is read-only; choose a writable folder)"),
])
def test_main_prints_one_line_and_returns_2(monkeypatch, capsys, exc, expected):
    def fail(args: argparse.Namespace) -> int:
        raise exc

    parser = cli.build_parser()
    real_parse = parser.parse_args
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(**{**vars(real_parse(argv)),
                                                                                 "func": fail}))
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == expected and "Traceback" not in err


def test_other_exceptions_are_not_swallowed(monkeypatch):
    parser = cli.build_parser()
    real_parse = parser.parse_args
    monkeypatch.setattr(cli, "build_parser", lambda: parser)

    def boom(args):
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(**{**vars(real_parse(argv)),
                                                                                 "func": boom}))
    with pytest.raises(RuntimeError):
        cli.main(["demo"])
