"""``selfish-inspect DIR|NS/NAME[@REV]``: print the size and density report of an export (local or on the Hub)."""

from __future__ import annotations

import argparse
import sys

from .. import cli
from ..exportdir import load_export
from ..hub.resolve import resolve_export
from .writer import format_report, size_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfish-inspect", description="Print per-tensor shape, nnz, density, "
                                "per-gate density and bytes of an export directory.")
    p.add_argument("export_dir", help="directory written by selfish-export, or a Hugging Face Hub id "
                   "NS/NAME[@REVISION] (downloaded to the Hub cache; a local path wins)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def body(args: argparse.Namespace) -> int:
    path = resolve_export(args.export_dir)
    report = size_report(load_export(path), path)  # recomputed from the files, validated
    sys.stdout.write(format_report(report) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
