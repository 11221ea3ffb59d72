"""Handlers' side of the worker: submit, await with the request timeout, cancel when the client goes away.

A client that disconnects or a request past its timeout has its job cancelled, so the worker drops it at its
next turn (a sequence leaves the continuous batch). Streams are Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

from fastapi import Request

from selfish_deploy.runtime import SamplingParams, TokenEvent, TokenScores

from .errors import ApiError
from .worker import GenerateJob, InferenceWorker, NotReady

POLL_S = 0.25  # how often a waiting handler checks that its client is still there


def worker(request: Request) -> InferenceWorker:
    return request.app.state.worker


def engine(request: Request):
    """The worker's SparseLM, for read-only use by handlers (vocabulary); 503 until it is loaded."""
    w = worker(request)
    if not w.ready.is_set():
        raise NotReady(f"the model failed to load: {w.load_error}" if w.load_error else "the model is loading")
    return w.lm


def timeout_error(request: Request) -> ApiError:
    return ApiError(504, f"the request took longer than {request.app.state.config.request_timeout_s:g} s")


async def score(request: Request, seqs: list[list[int]], top: int = 0) -> list[TokenScores]:
    """Score token-id sequences on the worker (batched with whatever else is waiting)."""
    job = worker(request).score(seqs, top)
    deadline = time.monotonic() + request.app.state.config.request_timeout_s
    try:
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=min(POLL_S, max(0.0, deadline - time.monotonic())))
            if done:
                return job.future.result()
            if time.monotonic() >= deadline:
                raise timeout_error(request)
            if await request.is_disconnected():
                raise asyncio.CancelledError()
    finally:
        if not job.future.done():
            job.cancel()


async def generate_many(request: Request, prompts: list[tuple[list[int], SamplingParams]], watch: bool = True
                        ) -> AsyncIterator[tuple[int, TokenEvent | object]]:
    """Generate several sequences at once: ``(index, TokenEvent)`` as tokens come, ``(index, Completion)``
    when one ends. All are cancelled if the consumer stops early, the client leaves or time runs out.

    ``watch``: check every POLL_S that the client is still there (for a streamed response Starlette does
    that itself, and two readers of the connection would compete)."""
    w = worker(request)
    jobs: list[GenerateJob] = []
    try:
        for ids, params in prompts:
            jobs.append(w.generate(ids, params))
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, job: GenerateJob):
            try:
                async for ev in job.stream():
                    await merged.put((i, ev))
                await merged.put((i, job.completion))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                await merged.put((i, e))

        tasks = [asyncio.create_task(pump(i, j)) for i, j in enumerate(jobs)]
        deadline = time.monotonic() + request.app.state.config.request_timeout_s
        left = len(jobs)
        check_at = time.monotonic() + POLL_S
        try:
            while left:
                now = time.monotonic()
                if now >= check_at:  # also while tokens keep coming
                    check_at = now + POLL_S
                    if now >= deadline:
                        raise timeout_error(request)
                    if watch and await request.is_disconnected():
                        raise asyncio.CancelledError()
                try:
                    i, item = await asyncio.wait_for(merged.get(), timeout=max(0.0, check_at - now))
                except asyncio.TimeoutError:
                    continue
                if isinstance(item, BaseException):
                    raise item
                if not isinstance(item, TokenEvent):
                    left -= 1
                yield i, item
        finally:
            for t in tasks:
                t.cancel()
    finally:
        for j in jobs:
            j.cancel()


def sse(data, event: str | None = None) -> str:
    """One Server-Sent Event; ``data`` is JSON-encoded unless it is a string already ([DONE])."""
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {body}\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
