"""The FastAPI application: wiring only (routes, middleware, start-up and shutdown).

Everything that holds a thread or a lock (the inference worker, the metrics registry) is made in the
lifespan, so the app object itself pickles (Ray Serve ships it to every replica, each loading its own engine).

    client -> [CORS] -> request counter -> API key -> body limit -> route -> worker thread (engine)
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from selfish_deploy.runtime import SparseLM

from . import errors, native_api, openai_api
from .auth import OPEN, ApiKeyMiddleware, document_bearer
from .config import ServeConfig
from .limits import BodyLimitMiddleware
from .metrics import Metrics
from .schemas import Health
from .worker import InferenceWorker

log = logging.getLogger(__name__)


class RequestCounter:
    """Counts requests by route template (not raw path: bounded label values), method and status."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            state = getattr(scope.get("app"), "state", None)
            metrics = getattr(state, "metrics", None)
            if metrics is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                metrics.requests.labels(route, scope.get("method", ""), str(status[0])).inc()


class SelfishAPI(FastAPI):
    """FastAPI whose OpenAPI schema declares the API key when one is required."""

    def openapi(self) -> dict:
        schema = super().openapi()
        config = self.state.config
        if config.api_key is not None:  # idempotent: the schema is cached and this runs on every call
            document_bearer(schema, OPEN if config.metrics_need_key else OPEN + ("/metrics",))
        return schema


def create_app(model: SparseLM | Callable[[], SparseLM], model_name: str | None = None,
               config: ServeConfig | None = None) -> FastAPI:
    """An app serving ``model``: a loaded SparseLM, or a function that loads one in the worker thread
    (``/health`` answers 503 until it has)."""
    config = config or ServeConfig()
    if model_name is not None and model_name != config.model_name:
        from dataclasses import replace

        config = replace(config, model_name=model_name)
    preloaded = isinstance(model, SparseLM)
    load = (lambda: model) if preloaded else model

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.metrics = Metrics(config.model_name)
        app.state.worker = InferenceWorker(load, app.state.metrics, config.max_queue, config.max_running,
                                           config.batching)
        app.state.worker.start()
        if preloaded:
            app.state.worker.ready.wait(30)
        try:
            yield
        finally:  # uvicorn let in-flight requests finish before this runs
            app.state.worker.stop()

    auth = config.api_key is not None
    app = SelfishAPI(title="selfish-deploy", version="0.1.0", lifespan=lifespan,
                  description="Scoring and generation with a sparse recurrent language model: native endpoints "
                  "and an OpenAI-compatible API (vLLM's shapes).",
                  responses=errors.documented(errors.ErrorResponse, auth, (400, 429, 504)))
    app.state.config = config
    errors.install(app)
    app.include_router(native_api.router)
    app.include_router(openai_api.router(auth))

    @app.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Loading or "
                                                                "failed to load"}})
    def health(request: Request):
        """200 once the model is loaded (no API key needed: for load balancers and HEALTHCHECK)."""
        w: InferenceWorker = request.app.state.worker
        if not w.ready.is_set():
            status = f"error: {w.load_error}" if w.load_error else "loading"
            return JSONResponse(Health(status=status, model=config.model_name).model_dump(), status_code=503)
        info = w.lm.info()
        return Health(status="ok", model=config.model_name, arch=info["arch"], vocab_size=info["vocab_size"],
                      density=info["density"], device=info["device"])

    @app.get("/info")
    def info(request: Request) -> dict:
        """Model (architecture, density, backend, kernels in use) and the server's limits."""
        from . import calls

        lm = calls.engine(request)
        return {"model": config.model_name, **lm.info(), "limits": config.limits(),
                "api_key_required": auth, "pid": os.getpid()}  # pid: which replica or worker answered

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def metrics(request: Request) -> Response:
        """Prometheus metrics (vLLM's names with the ``selfish:`` prefix)."""
        m: Metrics = request.app.state.metrics
        w: InferenceWorker = request.app.state.worker
        m.waiting.set(w.waiting)
        m.running.set(w.running)
        return Response(m.render(), media_type=m.content_type)

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)
    if auth:
        app.add_middleware(ApiKeyMiddleware, api_key=config.api_key, metrics_need_key=config.metrics_need_key)
    app.add_middleware(RequestCounter)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    return app
