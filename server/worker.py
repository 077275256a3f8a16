"""The device worker: one thread that owns the model and drives the BatchEngine.

Continuous batching: the engine has a fixed number of slots. Between two decode steps the
worker drains its command queue, drops cancelled work, admits pending requests into free
slots (all "high" priority work before any "normal" work, FIFO within a priority), then runs
one `engine.step()` for every active slot and hands each slot's PCM to its session as soon as
it exists. A cancelled, timed-out or disconnected request is released before the next step,
so it costs at most the step already running.

Hand-offs: the asyncio side puts commands into a bounded `queue.Queue`; the worker posts
results back with `loop.call_soon_threadsafe`, so the event loop never waits on the device.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from .backend import Backend

log = logging.getLogger("qwen3tts.server")

_ids = itertools.count(1)


class Job:
    """One speak request on its way through the device.

    `sink(kind, payload)` runs on the event loop: ("audio", np.ndarray float32),
    ("done", {"text_wait_s": seconds}), ("error", (code, message)). `cancel_requested` is set
    from the loop and read by the worker (a plain attribute store: atomic under the GIL).
    """

    def __init__(self, request: Any, priority: str, sink: Callable[[str, Any], None], label: str = "",
                 text_open: bool = False):
        self.id = next(_ids)
        self.request = request
        self.priority = priority
        self.sink = sink
        self.label = label
        # A streamed text: `request.text` is its start, the rest comes through append_text /
        # end_text. Pieces that arrive before the job has a slot wait here (worker thread only).
        self.text_open = text_open
        self.pieces: list[str] = []
        self.text_ended = False
        self.final_frames: int | None = None  # the frame budget given with the end of its text
        self.cancel_requested = False
        self.left = False  # it has left its worker (done, failed or dropped): counted once
        self.worker: DeviceWorker | None = None  # where it was submitted (set by the server)
        self.slot: int | None = None
        self.submitted_at = time.monotonic()
        self.admitted_at: float | None = None


class WorkerStopped(RuntimeError):
    pass


class DeviceWorker:
    def __init__(self, loader: Callable[[], Backend], loop: asyncio.AbstractEventLoop,
                 num_slots: int, max_commands: int = 1024, name: str = "device-worker",
                 on_step: Callable[[float], None] | None = None, device: int | None = None, index: int = 0):
        self._loader = loader
        self.device = device  # index into jax.devices(), the thread's default device; None: JAX's default
        self.index = index
        self.placement: str | None = None  # where its engine's arrays live, once loaded
        self._on_step = on_step  # step seconds, for the metrics (called on this thread)
        self._loop = loop
        self.num_slots = num_slots
        self._commands: queue.Queue = queue.Queue(maxsize=max_commands)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.backend: Backend | None = None
        self.state = "loading"  # loading -> ready -> stopped | failed
        self.error: str | None = None
        self.loaded: asyncio.Future = loop.create_future()
        self._stopping = False
        # Stats (written by the worker thread, read for /healthz).
        self.steps = 0
        self.active = 0
        self.pending = 0
        self.step_seconds = 0.0
        self.admits = 0
        self.admit_seconds = 0.0  # prefill time: every active stream waits for it
        # Jobs handed in (on the loop) and jobs that have left (on this thread): their difference
        # is the load the server balances devices on, exact at any moment.
        self.submitted = 0
        self.finished = 0

    # -- asyncio side ---------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job for admission; raises queue.Full when the worker is saturated."""
        if self.state != "ready":
            raise WorkerStopped(self.state)
        self._commands.put_nowait(("submit", job))
        self.submitted += 1

    @property
    def load(self) -> int:
        """Jobs submitted here that have not left yet (running or waiting for a slot)."""
        return self.submitted - self.finished

    def _left(self, job: Job) -> None:
        if not job.left:
            job.left = True
            self.finished += 1

    def append_text(self, job: Job, text: str) -> None:
        """More text for a streamed job (in order); raises queue.Full when the worker is saturated."""
        self._commands.put_nowait(("append", (job, text)))

    def end_text(self, job: Job, max_new_frames: int | None = None) -> None:
        """A streamed job's text is complete (`max_new_frames`: its budget, now that its length is known)."""
        self._commands.put_nowait(("end", (job, max_new_frames)))

    def cancel(self, job: Job) -> None:
        """Drop a job; the worker releases its slot before its next step."""
        job.cancel_requested = True
        try:
            self._commands.put_nowait(("wake", None))
        except queue.Full:
            pass  # the worker is busy and checks the flag before every step anyway

    def warm_voice(self, prompt: Any, language: str = "English") -> None:
        """Prefill a free slot once with `prompt` and release it, so the first real request on a
        new voice does not compile its prompt-length bucket while other streams wait."""
        b = self.backend
        if b is None:
            return
        try:
            req = b.defaults.request("Warm up.", prompt, language, max_new_frames=1)
            self._commands.put_nowait(("warm", req))
        except Exception:  # noqa: BLE001 - warming is an optimisation only
            pass

    def call(self, fn: Callable[[Backend], Any]) -> asyncio.Future:
        """Run `fn(backend)` on the worker thread between steps; the result comes back as a future."""
        fut = self._loop.create_future()
        if self.state not in ("loading", "ready"):
            fut.set_exception(WorkerStopped(self.state))
            return fut
        try:
            self._commands.put_nowait(("call", (fn, fut)))
        except queue.Full:
            fut.set_exception(queue.Full())
        return fut

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        try:
            self._commands.put(("stop", None), timeout=1.0)
        except queue.Full:
            pass
        if self.thread.is_alive() and self.state != "loading":  # a load in progress is not waited for
            self.thread.join(timeout)

    # -- worker thread --------------------------------------------------------------------
    def _post(self, fn: Callable, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _emit(self, job: Job, kind: str, payload: Any = None) -> None:
        self._post(job.sink, kind, payload)

    def _run(self) -> None:
        if self.device is None:
            return self._run_on_device()
        import jax  # only for explicit devices: the thread's arrays and steps live on its device

        with jax.default_device(jax.devices()[self.device]):
            self._run_on_device()

    def _run_on_device(self) -> None:
        try:
            backend = self._loader()
        except Exception as exc:  # noqa: BLE001 - reported to every client as MODEL_LOADING
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            log.error(json.dumps({"event": "model_load_failed", "error": self.error}))
            log.debug(traceback.format_exc())
            self._post(_set_result, self.loaded, False)
            self._fail_commands()
            return
        self.backend = backend
        self.placement = _placement(backend)
        self.state = "ready"
        self._post(_set_result, self.loaded, True)
        try:
            self._serve(backend)
        finally:
            self.state = "stopped"
            self._fail_commands()

    def _fail_commands(self) -> None:
        while True:
            try:
                kind, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "call":
                self._post(_set_exception, arg[1], WorkerStopped(self.state))
            elif kind == "submit":
                self._left(arg)
                self._emit(arg, "error", ("SYNTHESIS_ERROR", "server is shutting down"))

    def _serve(self, backend: Backend) -> None:
        engine = backend.engine
        free = list(range(self.num_slots))
        active: dict[int, Job] = {}
        pending = {"high": deque(), "normal": deque()}
        warm: deque = deque(maxlen=8)

        def feed_text(job: Job, text: str | None, max_new_frames: int | None = None) -> None:
            """A piece of a streamed job's text (None: its end, with its frame budget), now if it
            has a slot, else later."""
            if job.slot is None or active.get(job.slot) is not job:
                if job.slot is None and not job.cancel_requested:  # not admitted yet: kept for admission
                    if text is None:
                        job.text_ended, job.final_frames = True, max_new_frames
                    else:
                        job.pieces.append(text)
                return
            try:
                if text is None:
                    engine.end_text(job.slot, max_new_frames=max_new_frames)
                else:
                    engine.append_text(job.slot, text)
            except ValueError as exc:
                self._emit(job, "error", ("INVALID_TEXT", str(exc)))
                release(job.slot)

        def open_stream(slot: int, job: Job) -> None:
            engine.open(slot, job.request)
            for piece in job.pieces:
                engine.append_text(slot, piece)
            job.pieces.clear()
            if job.text_ended:
                engine.end_text(slot, max_new_frames=job.final_frames)

        def release(slot: int) -> None:
            job = active.pop(slot, None)
            if job is not None:
                self._left(job)
            try:
                engine.release(slot)
            except Exception as exc:  # noqa: BLE001 - a release must never kill the worker
                log.error(json.dumps({"event": "release_failed", "slot": slot, "error": repr(exc)}))
            free.append(slot)
            free.sort()

        while True:
            # 1. Commands; block only when there is nothing to step (nothing active, or every
            # active row waiting for text that only a command can bring).
            waiting = bool(active) and getattr(engine, "waiting", False)
            idle = (not active or waiting) and not any(pending.values())
            try:
                cmd = self._commands.get(timeout=0.5) if idle else self._commands.get_nowait()
            except queue.Empty:
                cmd = None
            while cmd is not None:
                kind, arg = cmd
                if kind == "stop":
                    self._stopping = True
                elif kind == "submit":
                    pending[arg.priority if arg.priority in pending else "normal"].append(arg)
                elif kind == "warm":
                    warm.append(arg)
                elif kind == "append":
                    feed_text(*arg)
                elif kind == "end":
                    feed_text(arg[0], None, arg[1])
                elif kind == "call":
                    fn, fut = arg
                    try:
                        result = fn(backend)
                    except Exception as exc:  # noqa: BLE001 - handed to the caller
                        self._post(_set_exception, fut, exc)
                    else:
                        self._post(_set_result, fut, result)
                try:
                    cmd = self._commands.get_nowait()
                except queue.Empty:
                    cmd = None
            if self._stopping:
                for slot in list(active):
                    release(slot)
                return

            # 2. Drop cancelled work, running or queued.
            for slot, job in list(active.items()):
                if job.cancel_requested:
                    release(slot)
            for q in pending.values():
                if any(j.cancel_requested for j in q):
                    for j in q:
                        if j.cancel_requested:
                            self._left(j)
                    kept = [j for j in q if not j.cancel_requested]
                    q.clear()
                    q.extend(kept)

            # 3. Admit: high before normal.
            while free and (pending["high"] or pending["normal"]):
                job = (pending["high"] or pending["normal"]).popleft()
                slot = free.pop(0)
                t0 = time.perf_counter()
                try:
                    open_stream(slot, job) if job.text_open else engine.admit(slot, job.request)
                except ValueError as exc:
                    release(slot)
                    self._left(job)
                    self._emit(job, "error", ("INVALID_TEXT", str(exc)))
                    continue
                except Exception as exc:  # noqa: BLE001
                    log.error(json.dumps({"event": "admit_failed", "job": job.label,
                                          "error": repr(exc)}))
                    release(slot)
                    self._left(job)
                    self._emit(job, "error", ("SYNTHESIS_ERROR", f"{type(exc).__name__}: {exc}"))
                    continue
                self.admits += 1
                self.admit_seconds += time.perf_counter() - t0
                job.slot = slot
                job.admitted_at = time.monotonic()
                active[slot] = job
            while warm and free:  # only into a slot nobody waits for
                slot = free.pop(0)
                try:
                    engine.admit(slot, warm.popleft())
                except Exception as exc:  # noqa: BLE001
                    log.warning(json.dumps({"event": "warm_failed", "error": repr(exc)}))
                release(slot)
            self.active = len(active)
            self.pending = len(pending["high"]) + len(pending["normal"])
            if not active or getattr(engine, "waiting", False):  # nothing to step until text comes
                continue

            # 4. One decode step for every active slot.
            t0 = time.perf_counter()
            try:
                outputs = engine.step()
            except Exception as exc:  # noqa: BLE001 - the worker lives on
                slots = getattr(exc, "slots", None)  # engine.SlotError: the failure is these slots' alone
                culprits = [slot for slot in (slots if slots is not None else list(active)) if slot in active]
                log.error(json.dumps({"event": "step_failed", "error": repr(exc), "slots": culprits,
                                      "jobs": [active[slot].label for slot in culprits]}))
                log.debug(traceback.format_exc())
                for slot in culprits:
                    self._emit(active[slot], "error", ("SYNTHESIS_ERROR", f"{type(exc).__name__}: {exc}"))
                    release(slot)
                if slots is None and hasattr(engine, "reset"):
                    engine.reset()  # a step that failed midway may have consumed its device state
                continue
            seconds = time.perf_counter() - t0
            self.step_seconds += seconds
            self.steps += 1
            if self._on_step is not None:
                self._on_step(seconds)
            for slot, out in outputs.items():
                job = active.get(slot)
                if job is None:
                    continue
                if job.cancel_requested:
                    release(slot)
                    continue
                if out.pcm is not None and len(out.pcm):
                    self._emit(job, "audio", out.pcm)
                if out.finished:
                    self._emit(job, "done", {"text_wait_s": getattr(out, "text_wait_s", 0.0)})
                    release(slot)
            self.active = len(active)


def _placement(backend: Backend) -> str | None:
    """The device of the engine's state (None for engines without JAX arrays: test doubles)."""
    state = getattr(backend.engine, "state", None)
    length = getattr(state, "length", None)
    devices = getattr(length, "devices", None)
    return ",".join(sorted(str(d) for d in devices())) if devices else None


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
