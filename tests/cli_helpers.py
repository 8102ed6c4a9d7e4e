"""What the CLI tests share: running `nasaudit` in-process, and the one-line error contract."""

from __future__ import annotations

import pytest

from nasaudit.cli import main


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """Run `nasaudit ARGV` in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, *needles: str) -> str:
    """The error is exactly one line, starts like every nasaudit error, has no traceback."""
    assert err.startswith("nasaudit: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err
