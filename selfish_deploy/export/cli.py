"""``selfish-export RUN_DIR --out DIR``: compress a trained run for deployment."""

from __future__ import annotations

import argparse
import logging

from .. import cli
from ..csr import DTYPES
from .writer import export_run, format_report

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfish-export", description="Export a run directory as CSR safetensors "
                                "(and optionally ONNX) into an export directory.")
    p.add_argument("run_dir", help="run directory written by selfish-train")
    p.add_argument("--out", required=True, help="export directory to write")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="dtype of the stored weight values")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def body(args: argparse.Namespace) -> int:
    report = export_run(args.run_dir, args.out, args.dtype)
    log.info("size report:\n%s", format_report(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
