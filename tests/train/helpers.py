"""Assertion helpers shared by the command-line tests."""

from __future__ import annotations

from pathlib import Path


def error_line(capsys) -> str:
    """Return the one "blocklab ..." line a failed command printed to stderr."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("blocklab ")]
    assert len(errors) == 1, err
    return errors[0]


def snapshot(path: Path) -> dict[Path, bytes]:
    """Return every file under ``path`` with its contents, to check that nothing changed."""
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
