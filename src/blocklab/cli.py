"""The ``blocklab`` command.

Each subcommand lives in its own module, which provides
``configure_parser(parser)`` and ``run_command(args) -> int``. This file only
dispatches, prints errors and sets exit codes: a mistake a user can make
(``UsageError``, ``ValueError``, a missing file) prints one line and exits 2,
and an interrupt prints one line and exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import traceback

from blocklab import __version__
from blocklab.errors import UsageError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("blocklab.train", "train a model on text and save a run directory"),
    "eval": ("blocklab.evaluate", "validation perplexity of a run at several context lengths"),
    "generate": ("blocklab.generate_cli", "sample text from a trained run"),
    "compare": ("blocklab.compare", "train variants side by side and write a report"),
    "check": ("blocklab.claims", "measure the textbook claims about these parts"),
    "inspect": ("blocklab.hf_cli", "describe a Hugging Face checkpoint in blocklab terms"),
    "bench": ("blocklab.bench", "time blocklab parts against reference implementations"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as argparse does, without the usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blocklab", description="Transformer parts: build, train, compare and measure them.")
    parser.add_argument("--version", action="version", version=f"blocklab {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages and print tracebacks of errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        command = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        module.configure_parser(command)
        command.set_defaults(run=module.run_command)
    return parser


def _command_name(argv: list[str]) -> str | None:
    """Return the subcommand named in ``argv`` without parsing it, or None."""
    for argument in argv:
        if not argument.startswith("-"):
            return argument if argument in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command line in ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    An interrupt (SIGINT) at any point from here on, including while
    ``build_parser`` imports the command modules, prints one line and
    returns 130.
    """
    command = _command_name(sys.argv[1:] if argv is None else list(argv))
    try:
        return _run(argv)
    except KeyboardInterrupt:
        prefix = f"blocklab {command}" if command else "blocklab"
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130


def _build_parser_holding_interrupts() -> argparse.ArgumentParser:
    """Build the parser with SIGINT held back until the command modules are imported.

    torch 2.13 swallows a KeyboardInterrupt raised while it imports numpy and
    can leave modules half imported. Holding the signal until the imports
    finish turns every Ctrl-C during start-up into the usual clean exit.
    """
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except ValueError:  # main() called from a thread other than the main one
        return build_parser()
    try:
        parser = build_parser()
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
    return parser


def _run(argv: list[str] | None) -> int:
    parser = _build_parser_holding_interrupts()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as error:
        if args.verbose:
            traceback.print_exc()  # a ValueError from a bug looks like a usage error without it
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"blocklab {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        # A failed allocation is the size the user asked for, not a bug: say so
        # in one line. Any other RuntimeError is a bug and keeps its traceback.
        text = str(error)
        if not isinstance(error, MemoryError) and "allocate" not in text:
            raise
        if args.verbose:
            traceback.print_exc()
        detail = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        print(
            f"blocklab {args.command}: error: out of memory ({detail}); "
            "use smaller sizes such as --batch-size, --seq-len or d_model",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
