"""Scale-out on Ray Serve: the same FastAPI app (``serve.ingress``), one engine per replica.

Each replica unpickles its own copy of the app and runs its lifespan, so it starts its own inference worker
and loads its own engine (nothing is shared between replicas). Start it with

    serve run selfish_deploy.serving.ray_app:build model=NS/NAME num_replicas=2 num_cpus=2
    serve run serving/ray_serve.yaml                     # the same, from a config file (autoscaling there)

``build(args)`` takes strings (as ``serve run key=value`` passes them) or values: ``model``, ``backend``,
``threads``, ``num_replicas`` (or ``"auto"``), ``num_cpus`` (per replica), ``max_ongoing_requests``,
``min_replicas`` / ``max_replicas`` / ``target_ongoing_requests`` (autoscaling, used when ``num_replicas`` is
``"auto"``) and every ServeConfig field (``api_key``, ``max_queue``, ...), which also read ``SELFISH_*``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import fields
from functools import partial

from ray import serve

from selfish_deploy.errors import UserError

from .app import create_app
from .config import ServeConfig, env_default

log = logging.getLogger(__name__)


def load_engine(model: str | None, backend: str, threads: int | None):
    """In the replica: resolve the model (bundled, directory or Hub id) and build the engine."""
    from selfish_deploy.assets import default_model_dir
    from selfish_deploy.hub.resolve import resolve_export
    from selfish_deploy.runtime import SparseLM

    path = resolve_export(model) if model else default_model_dir()
    return SparseLM.load(path, backend=backend, threads=threads)


def _typed(name: str, value):
    default = ServeConfig.__dataclass_fields__[name].default
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, tuple):
        return tuple(x.strip() for x in value.split(",") if x.strip())
    return type(default)(value)


def serve_config(args: dict) -> ServeConfig:
    values = {f.name: _typed(f.name, args[f.name]) if f.name in args else env_default(f.name)
              for f in fields(ServeConfig)}
    if "model_name" not in args and values["model_name"] == ServeConfig.model_name:
        values["model_name"] = args.get("model") or os.environ.get("SELFISH_MODEL") or "ptb-lstm-sparse"
    return ServeConfig(**values)


def deployment_options(args: dict) -> dict:
    replicas = str(args.get("num_replicas", os.environ.get("SELFISH_RAY_REPLICAS", "1")))
    options = {"ray_actor_options": {"num_cpus": float(args.get("num_cpus", 1))},
               # Ray's own queue in front of each replica; the replica's bounded queue answers 429 past it
               "max_ongoing_requests": int(args.get("max_ongoing_requests", 128))}
    if replicas == "auto":
        options["autoscaling_config"] = {"min_replicas": int(args.get("min_replicas", 1)),
                                         "max_replicas": int(args.get("max_replicas", 4)),
                                         "target_ongoing_requests": int(args.get("target_ongoing_requests", 32))}
    else:
        options["num_replicas"] = int(replicas)
    return options


def build(args: dict | None = None):
    """The Ray Serve application (an app builder for ``serve run``)."""
    args = dict(args or {})
    known = {f.name for f in fields(ServeConfig)} | {"model", "backend", "threads", "num_replicas", "num_cpus",
                                                     "max_ongoing_requests", "min_replicas", "max_replicas",
                                                     "target_ongoing_requests"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise UserError(f"unknown arguments for the Ray Serve app: {', '.join(unknown)}")
    model = args.get("model") or os.environ.get("SELFISH_MODEL")
    threads = args.get("threads")
    threads = int(threads) if threads not in (None, "") else None
    config = serve_config(args)
    app = create_app(partial(load_engine, model, args.get("backend", "sparse"), threads), config=config)
    options = deployment_options(args)
    log.info("Ray Serve app for %s: %s", model or "the bundled model", options)

    @serve.deployment(name="selfish", **options)
    @serve.ingress(app)
    class SelfishServer:
        """One replica: the app's lifespan starts its inference worker and loads its engine."""

    return SelfishServer.bind()
