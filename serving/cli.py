"""``selfish-serve``: serve an export directory (default: the bundled PTB model) over HTTP.

Every setting is a flag and a ``SELFISH_*`` environment variable (the flag wins). The model is resolved (and a
Hub id downloaded) before the port is bound, so a bad ``--model`` exits 2; the engine is then built by the
inference worker while ``/health`` answers 503. SIGTERM (and SIGINT) shut down gracefully: no new connections,
in-flight requests finish (``--graceful-timeout``), then the worker stops; after a SIGTERM the exit status is 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from functools import partial

from selfish_deploy import cli
from selfish_deploy.assets import default_model_dir
from selfish_deploy.errors import UserError

from .config import ENV, ServeConfig, env_default

log = logging.getLogger(__name__)

HELP = {  # ServeConfig field -> flag help
    "model_name": "model id clients send as 'model' and GET /v1/models lists (default: the --model value, or "
                  "ptb-lstm-sparse for the bundled model)",
    "max_body_bytes": "largest request body; bigger ones get 413 before being read",
    "max_input_tokens": "most tokens in one prompt or scored text (400 above)",
    "max_new_tokens": "most tokens generated per sequence",
    "max_queue": "most requests waiting for the inference worker (429 with Retry-After above)",
    "max_running": "most sequences in the continuous generation batch",
    "max_n": "most choices (n) per completion request",
    "max_prompts": "most prompts or texts in one request",
    "max_logprobs": "most top log-probabilities per position",
    "request_timeout_s": "seconds before a request gets 504 and its work is cancelled",
    "api_key": "require 'Authorization: Bearer KEY' on every route but /health (and /metrics)",
    "metrics_need_key": "require the API key on /metrics too",
    "cors_origins": "comma-separated origins allowed by CORS (default: none, no CORS headers)",
    "retry_after_s": "Retry-After seconds sent with a 429",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfish-serve", description="Serve a sparse language model: native "
                                "POST /v1/score and /v1/generate, OpenAI-compatible /v1/completions, /v1/models, "
                                "/tokenize, /detokenize, /tokenizer_info; GET /health, /info, /metrics; OpenAPI "
                                "docs at /docs. Each flag also reads a SELFISH_* environment variable.")
    p.add_argument("--model", default=os.environ.get("SELFISH_MODEL"),
                   help="export directory or Hugging Face Hub id NS/NAME[@REVISION] (a local path wins; default: "
                   "$SELFISH_MODEL, else the bundled sparse PTB model)")
    p.add_argument("--backend", default=os.environ.get("SELFISH_BACKEND", "sparse"),
                   choices=["sparse", "dense", "onnx"], help="engine backend ($SELFISH_BACKEND)")
    p.add_argument("--threads", type=int, default=int(os.environ["SELFISH_THREADS"])
                   if os.environ.get("SELFISH_THREADS") else None,
                   help="engine CPU threads ($SELFISH_THREADS; default: PyTorch's)")
    p.add_argument("--host", default=os.environ.get("SELFISH_HOST", "127.0.0.1"),
                   help="address to bind ($SELFISH_HOST; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=int(os.environ.get("SELFISH_PORT", "8000")),
                   help="port to bind ($SELFISH_PORT)")
    p.add_argument("--device", default=os.environ.get("SELFISH_DEVICE", "cpu"), help="cpu, cuda or cuda:N")
    p.add_argument("--graceful-timeout", type=float, default=float(os.environ.get("SELFISH_GRACEFUL_TIMEOUT", 30)),
                   help="seconds in-flight requests get to finish on SIGTERM ($SELFISH_GRACEFUL_TIMEOUT)")
    for name, text in HELP.items():
        flag = "--" + name.replace("_", "-").removesuffix("-s")
        default = ServeConfig.__dataclass_fields__[name].default
        kind = "store_true" if isinstance(default, bool) else None
        kw = {"action": kind} if kind else {"type": str if isinstance(default, tuple) or default is None
                                            else type(default)}
        shown = "" if name in ("model_name", "api_key") else f"; default: {default}"
        p.add_argument(flag, dest=name, default=None, help=f"{text} (${ENV[name]}{shown})", **kw)
    p.add_argument("--no-batching", dest="batching", action="store_false", default=None,
                   help="score one request and generate one sequence at a time (for comparison; "
                   "$SELFISH_BATCHING=0)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def make_config(args: argparse.Namespace, default_name: str) -> ServeConfig:
    """Flags over environment over defaults."""
    values = {}
    for name in ServeConfig.__dataclass_fields__:
        given = getattr(args, name, None)
        if given is None:
            given = env_default(name)
        if name == "cors_origins" and isinstance(given, str):
            given = tuple(x.strip() for x in given.split(",") if x.strip())
        values[name] = given
    if values["model_name"] == ServeConfig.model_name:
        values["model_name"] = default_name
    return ServeConfig(**values)


def body(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from selfish_deploy.exportdir import load_export
    from selfish_deploy.hub.resolve import resolve_export
    from selfish_deploy.runtime import SparseLM

    from .app import create_app

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    model_dir = str(resolve_export(args.model)) if args.model else str(default_model_dir())
    exported = load_export(model_dir)  # validated (manifest, format) before the port is bound
    config = make_config(args, args.model or "ptb-lstm-sparse")
    log.info("serving %s as %r; limits %s; API key %s", model_dir, config.model_name, config.limits(),
             "required" if config.api_key else "off")
    app = create_app(partial(SparseLM, exported, args.backend, args.device, args.threads), config=config)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                                           timeout_graceful_shutdown=args.graceful_timeout))
    exit_zero_after_sigterm(server)
    server.run()
    return 0 if server.started else 3  # 3: the app's start-up failed (logged), as uvicorn.run exits then


def exit_zero_after_sigterm(server) -> None:
    """Make a SIGTERM shut ``server`` down gracefully and the process end with status 0.

    uvicorn handles SIGTERM itself while it serves (graceful shutdown), then restores the handler it found
    and raises the signal again (``Server.capture_signals``), so with the default handler the process dies of
    SIGTERM after the clean shutdown (status -15; 143 in a shell): killed, not exited, to a supervisor. The
    handler it finds is this one, which asks the server to exit: a no-op once it has (and a SIGTERM just
    before uvicorn takes over stops the server right after start-up).
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread (in-process callers keep theirs)

    def on_sigterm(signum, frame) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, on_sigterm)


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
