"""``selfish-export RUN_DIR --out DIR [--dtype D] [--onnx [--onnx-sparse-initializers]]``: compress a run."""

from __future__ import annotations

import argparse
import logging

from .. import cli
from ..csr import DTYPES
from .onnx_graph import build_onnx
from .writer import build_export, export_run, format_report, size_report

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfish-export", description="Export a run directory as CSR safetensors "
                                "(and optionally ONNX) into an export directory.")
    p.add_argument("run_dir", help="run directory written by selfish-train")
    p.add_argument("--out", required=True, help="export directory to write")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="dtype of the stored weight values")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (opset 17, runs in ONNX Runtime)")
    p.add_argument("--onnx-sparse-initializers", action="store_true",
                   help="store the sparse matrices of model.onnx as ONNX sparse initializers: a smaller file below "
                   "density ~0.33 (fp32), same memory once loaded (implies --onnx)")
    p.add_argument("--dry-run", action="store_true", help="read, check and encode everything, write nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def body(args: argparse.Namespace) -> int:
    if args.dry_run:
        model = build_export(args.run_dir, args.dtype)
        if args.onnx or args.onnx_sparse_initializers:
            build_onnx(model, sparse=args.onnx_sparse_initializers)
        log.info("dry run: nothing written; size report:\n%s", format_report(size_report(model)))
        return 0
    report = export_run(args.run_dir, args.out, args.dtype, onnx=args.onnx,
                        onnx_sparse=args.onnx_sparse_initializers)
    log.info("size report:\n%s", format_report(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
