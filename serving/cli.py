"""``selfish-serve``: serve an export directory (default: the bundled PTB model) over HTTP."""

from __future__ import annotations

import argparse
import logging
import os

from selfish_deploy import cli
from selfish_deploy.assets import default_model_dir
from selfish_deploy.errors import UserError
from selfish_deploy.hub.resolve import resolve_export

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfish-serve", description="Serve a sparse language model: POST /v1/score, "
                                "POST /v1/generate, GET /health; OpenAPI docs at /docs.")
    p.add_argument("--model", default=os.environ.get("SELFISH_MODEL"),
                   help="export directory or Hugging Face Hub id NS/NAME[@REVISION] (a local path wins; default: "
                   "$SELFISH_MODEL, else the bundled sparse PTB model)")
    p.add_argument("--host", default=os.environ.get("SELFISH_HOST", "127.0.0.1"), help="address to bind")
    p.add_argument("--port", type=int, default=int(os.environ.get("SELFISH_PORT", "8000")), help="port to bind")
    p.add_argument("--device", default=os.environ.get("SELFISH_DEVICE", "cpu"), help="cpu, cuda or cuda:N")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def body(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from selfish_deploy.runtime import SparseLM

    from .app import create_app

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available")
    model_dir = str(resolve_export(args.model)) if args.model else str(default_model_dir())
    lm = SparseLM.load(model_dir, device=args.device)  # load (and validate) before binding the port
    log.info("loaded %s (%s, vocabulary %d, density %.3f) on %s", model_dir, lm.config.arch, len(lm.vocab),
             lm.exported.config.get("density", 1.0), lm.device)
    uvicorn.run(create_app(lm, args.model or model_dir), host=args.host, port=args.port, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
