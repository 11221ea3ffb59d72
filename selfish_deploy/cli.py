"""What every ``selfish-*`` command shares: logging set-up and turning ``UserError`` into exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from .errors import UserError

log = logging.getLogger("selfish_deploy")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run(body: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
        argv: list[str] | None) -> int:
    """Parse ``argv``, run ``body``; bad input becomes a one-line message on stderr and exit code 2."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its message
        return int(e.code or 0)
    setup_logging(getattr(args, "verbose", False))
    try:
        return int(body(args) or 0)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
