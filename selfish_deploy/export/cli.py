"""``selfish-export RUN_DIR --out DIR [--dtype D] [--onnx] [--speed-report F]``: a run -> export directory.

``selfish-export --refresh EXPORT_DIR`` writes the card and manifest of an existing export anew.
"""

from __future__ import annotations

import argparse
import logging

from .. import cli
from ..csr import DTYPES
from ..errors import UserError
from ..hub.card import DEFAULT_LICENSE, read_speed_report
from ..hub.resolve import parse_repo_id
from .onnx_graph import build_onnx
from .writer import build_export, export_run, format_report, refresh_export, size_report

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfish-export", description="Export a run directory as CSR safetensors "
                                "(and optionally ONNX) into an export directory.")
    p.add_argument("run_dir", help="run directory written by selfish-train (with --refresh: an export directory)")
    p.add_argument("--out", help="export directory to write (required unless --refresh)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="dtype of the stored weight values")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (opset 17, runs in ONNX Runtime)")
    p.add_argument("--onnx-sparse-initializers", action="store_true",
                   help="store the sparse matrices of model.onnx as ONNX sparse initializers: a smaller file below "
                   "density ~0.33 (fp32), same memory once loaded (implies --onnx)")
    p.add_argument("--repo-id", metavar="NS/NAME", help="Hub repository the model card's usage snippets name "
                   "(default: a NS/NAME placeholder)")
    p.add_argument("--speed-report", metavar="JSON", help="benchmark result to show in the model card: "
                   '{"machine", "date", "rows": [{"case", "ours_ms", "dense_ms", "speedup"}]}')
    p.add_argument("--license", default=DEFAULT_LICENSE, help="license id in the model card's metadata "
                   "(default: %(default)s)")
    p.add_argument("--refresh", action="store_true", help="RUN_DIR is an existing export directory: check it "
                   "and write its README.md card and manifest.json anew (upgrades an export made before them)")
    p.add_argument("--dry-run", action="store_true", help="read, check and encode everything, write nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def body(args: argparse.Namespace) -> int:
    if args.repo_id:
        parse_repo_id(args.repo_id, allow_revision=False)
    speed = read_speed_report(args.speed_report) if args.speed_report else None
    if args.refresh:
        if args.out or args.dry_run or args.onnx or args.onnx_sparse_initializers:
            raise UserError("--refresh rewrites the card and manifest in place: it takes no --out, --onnx or --dry-run")
        refresh_export(args.run_dir, args.repo_id, speed, args.license)
        return 0
    if not args.out:
        raise UserError("--out is required (the export directory to write)")
    if args.dry_run:
        model = build_export(args.run_dir, args.dtype)
        if args.onnx or args.onnx_sparse_initializers:
            build_onnx(model, sparse=args.onnx_sparse_initializers)
        log.info("dry run: nothing written; size report:\n%s", format_report(size_report(model)))
        return 0
    report = export_run(args.run_dir, args.out, args.dtype, onnx=args.onnx,
                        onnx_sparse=args.onnx_sparse_initializers, repo_id=args.repo_id, speed=speed,
                        license=args.license)
    log.info("size report:\n%s", format_report(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
