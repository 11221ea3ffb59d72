"""The inference worker: the one thread that owns the engine, fed by a bounded queue.

The engine is not thread-safe, so every forward runs here. Each turn of the loop

    1. takes what waits in the queue: all scoring jobs (scored together in one ``score_ids`` call) and as many
       generation jobs as the continuous batch has room for (prefilled together, joining the batch);
    2. drops sequences whose client went away or timed out;
    3. advances every active sequence by one token in one batched ``step()``.

Handlers live on the event loop and never touch the engine: they submit a job and await its future (scoring)
or its event queue (generation); results cross back with ``loop.call_soon_threadsafe``. With
``batching=False`` the worker takes one scoring job and one generated sequence at a time (for benchmarks).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from selfish_deploy.errors import UserError
from selfish_deploy.runtime import Completion, SamplingParams, SparseLM, TokenEvent

from .metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already: answered 429 with Retry-After."""


class NotReady(Exception):
    """The model is still loading, failed to load, or the server is shutting down: answered 503."""


def _resolve(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, value=None, error: BaseException | None = None):
    """Complete ``fut`` from the worker thread (ignored when the awaiting side gave up already)."""

    def done():
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(value)

    try:
        loop.call_soon_threadsafe(done)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


@dataclass(eq=False)
class Job:
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    def cancel(self) -> None:
        """Called from the event loop; the worker drops the job at its next turn."""
        self.cancelled = True


@dataclass(eq=False)
class ScoreJob(Job):
    seqs: list[list[int]] = field(default_factory=list)
    top: int = 0
    future: asyncio.Future | None = None


@dataclass(eq=False)
class GenerateJob(Job):
    """One generated sequence; ``events`` receives TokenEvents, then the Completion (or an exception)."""

    prompt_ids: list[int] = field(default_factory=list)
    params: SamplingParams = field(default_factory=SamplingParams)
    events: asyncio.Queue | None = None
    last_token: float | None = None

    def push(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:
            pass

    async def stream(self):
        """TokenEvents as they come; the Completion is returned through ``self.completion`` at the end."""
        while True:
            item = await self.events.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Completion):
                self.completion = item
                return
            yield item


class InferenceWorker:
    """Owns one engine in one thread. ``start()`` loads it there (``ready`` tells when)."""

    def __init__(self, load: Callable[[], SparseLM], metrics: Metrics, max_queue: int = 256, max_running: int = 64,
                 batching: bool = True):
        self._load = load
        self.metrics = metrics
        self.max_queue = max_queue
        self.max_running = max_running if batching else 1
        self.batching = batching
        self.lm: SparseLM | None = None
        self.load_error: str | None = None
        self.ready = threading.Event()
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._running = 0
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)

    # ---- event-loop side -----------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return self._running

    def start(self) -> None:
        self._thread.start()

    def _submit(self, job: Job) -> None:
        if self.load_error is not None:
            raise NotReady(f"the model failed to load: {self.load_error}")
        if not self.ready.is_set():
            raise NotReady("the model is loading")
        with self._cv:
            if self._stopping:
                raise NotReady("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                self.metrics.rejected.inc()
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self._pending.append(job)
            self.metrics.waiting.set(len(self._pending))
            self._cv.notify()

    def score(self, seqs: list[list[int]], top: int = 0) -> ScoreJob:
        """Submit token-id sequences to score; await ``job.future`` for their TokenScores."""
        loop = asyncio.get_running_loop()
        job = ScoreJob(loop, seqs=seqs, top=top, future=loop.create_future())
        self._submit(job)
        return job

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerateJob:
        """Submit one sequence to generate; iterate ``job.stream()`` for its tokens."""
        loop = asyncio.get_running_loop()
        job = GenerateJob(loop, prompt_ids=prompt_ids, params=params, events=asyncio.Queue())
        self._submit(job)
        return job

    def stop(self, timeout: float | None = 30.0) -> None:
        """End the thread after its current engine call; what is left is cancelled. Called once the HTTP server
        has let in-flight requests finish (graceful shutdown happens there)."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        gc.unfreeze()  # the startup heap is garbage like any other now (an app, its engine: cycles)

    # ---- worker thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.lm = self._load()
            torch.set_num_threads(self.lm.threads)  # this thread runs every forward
        except Exception as e:  # noqa: BLE001 - reported by /health, logged with its traceback
            self.load_error = str(e) or type(e).__name__
            log.exception("the model failed to load")
            return
        # The heap after startup is static from here on: move it out of the collector's sight, as vLLM's
        # server does, so that an oldest-generation collection while serving pauses for the requests' own
        # objects only (torch's import alone makes 170k objects: a full collection of 86-110 ms instead of
        # microseconds, benchmarks/gc_pause.py). stop() undoes it.
        gc.collect()
        gc.freeze()
        self.ready.set()
        log.info("inference worker ready (batching %s, queue %d, batch %d)", "on" if self.batching else "off",
                 self.max_queue, self.max_running)
        gen = self.lm.batch_generator()
        active: dict[int, tuple[GenerateJob, object]] = {}
        try:
            self._loop(gen, active)
        except Exception as e:  # noqa: BLE001 - a bug here must not leave requests waiting forever
            log.exception("the inference worker failed")
            self.load_error = f"the inference worker failed: {e}"  # /health answers 503 from now on
            self.ready.clear()
            self._abandon(gen, active)
        log.info("inference worker stopped")

    def _loop(self, gen, active: dict) -> None:
        while True:
            scores, starts = self._take(len(active))
            if scores is None:  # stopping: whatever is left has no client any more (uvicorn waited for them)
                self._abandon(gen, active)
                break
            if scores:
                self._score(scores)
            if starts:
                self._start(gen, starts, active)
            for sid, (job, seq) in list(active.items()):
                if job.cancelled:
                    gen.cancel(seq)
                    del active[sid]
                    job.push(asyncio.CancelledError())
            if active:
                self._running = len(active)
                self.metrics.running.set(len(active))
                self._step(gen, active)
            self._running = len(active)
            self.metrics.running.set(len(active))

    def _take(self, n_active: int) -> tuple[list[ScoreJob] | None, list[GenerateJob]]:
        """Wait for work; take the scoring jobs and the generation jobs there is room for. None: stop."""
        with self._cv:
            while not self._pending and not n_active and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return None, []
            scores: list[ScoreJob] = []
            starts: list[GenerateJob] = []
            room = self.max_running - n_active
            keep: deque[Job] = deque()
            while self._pending:
                job = self._pending.popleft()
                if job.cancelled:
                    continue
                if isinstance(job, ScoreJob) and (self.batching or not scores):
                    scores.append(job)
                elif isinstance(job, GenerateJob) and room > 0:
                    starts.append(job)
                    room -= 1
                else:
                    keep.append(job)
            self._pending = keep
            self.metrics.waiting.set(len(keep))
            return scores, starts

    def _abandon(self, gen, active: dict) -> None:
        error = NotReady("the server is shutting down")
        for job, seq in active.values():
            gen.cancel(seq)
            job.push(error)
        active.clear()
        with self._cv:
            left, self._pending = list(self._pending), deque()
        for job in left:
            if isinstance(job, ScoreJob):
                _resolve(job.loop, job.future, error=error)
            else:
                job.push(error)
        self._running = 0
        self.metrics.running.set(0)
        self.metrics.waiting.set(0)

    def _score(self, jobs: list[ScoreJob]) -> None:
        seqs = [s for j in jobs for s in j.seqs]
        top = max(j.top for j in jobs)
        try:
            if self.batching:
                self.metrics.observe_batch("score", len(seqs))
                results = self.lm.score_ids(seqs, top_logprobs=top)
            else:
                results = []
                for s in seqs:
                    self.metrics.observe_batch("score", 1)
                    results += self.lm.score_ids([s], top_logprobs=top)
        except UserError as e:  # one bad job: score each alone so the others still get answers
            if len(jobs) == 1:
                _resolve(jobs[0].loop, jobs[0].future, error=e)
                return
            for j in jobs:
                self._score([j])
            return
        except Exception as e:  # noqa: BLE001 - the handler answers 500, the worker goes on
            log.exception("scoring failed")
            for j in jobs:
                _resolve(j.loop, j.future, error=e)
            return
        self.metrics.prompt_tokens.inc(sum(len(s) - 1 for s in seqs))
        at = 0
        now = time.perf_counter()
        for j in jobs:
            part = results[at:at + len(j.seqs)]
            at += len(j.seqs)
            for r in part:  # the batch was scored with the largest top-n any job asked for
                r.top = [t[:j.top] for t in r.top] if j.top else None
            self.metrics.observe_e2e("score", now - j.arrived)
            _resolve(j.loop, j.future, part)

    def _start(self, gen, jobs: list[GenerateJob], active: dict) -> None:
        """Prefill the new sequences together (``add_many``); a bad prompt among them: each alone."""
        try:
            seqs = gen.add_many([j.prompt_ids for j in jobs], [j.params for j in jobs])
        except UserError as e:
            if len(jobs) == 1:
                jobs[0].push(e)
            else:
                for job in jobs:
                    self._start(gen, [job], active)
            return
        except Exception as e:  # noqa: BLE001
            log.exception("prefill failed")
            for job in jobs:
                job.push(e)
            return
        for job, seq in zip(jobs, seqs):
            self.metrics.prompt_tokens.inc(len(job.prompt_ids))
            if seq.finished:  # max_tokens=0
                job.push(seq.completion())
            else:
                active[seq.id] = (job, seq)

    def _step(self, gen, active: dict) -> None:
        self.metrics.observe_batch("generate", len(active))
        try:
            events: list[TokenEvent] = gen.step()
        except Exception as e:  # noqa: BLE001 - fail the batch, keep serving
            log.exception("generation step failed")
            for job, seq in active.values():
                gen.cancel(seq, "error")
                job.push(e)
            active.clear()
            return
        now = time.perf_counter()
        self.metrics.generation_tokens.inc(len(events))
        for ev in events:
            job, seq = active[ev.seq_id]
            if job.last_token is None:
                self.metrics.ttft.observe(now - job.arrived)
            else:
                self.metrics.itl.observe(now - job.last_token)
            job.last_token = now
            job.push(ev)
            if ev.finished:
                del active[ev.seq_id]
                self.metrics.observe_e2e("generate", now - job.arrived)
                job.push(seq.completion())
