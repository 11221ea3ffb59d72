"""``selfish-inspect DIR``: print the size and density report of an export directory."""

from __future__ import annotations

import argparse
import sys

from .. import cli
from ..exportdir import load_export
from .writer import format_report, size_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfish-inspect", description="Print per-tensor shape, nnz, density, "
                                "per-gate density and bytes of an export directory.")
    p.add_argument("export_dir", help="directory written by selfish-export")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def body(args: argparse.Namespace) -> int:
    report = size_report(load_export(args.export_dir), args.export_dir)  # recomputed from the files, validated
    sys.stdout.write(format_report(report) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
