"""One utterance, from checked text to PCM chunks: what every front end shares.

WebSocket sessions (server/session.py), the OpenAI-compatible HTTP API (server/openai_api.py)
and the Wyoming server (server/wyoming.py) check text and instructions by the same rules,
resolve voices the same way and hand the device worker the same `GenerationRequest`, so a
text, voice and seed give the same samples whichever door they came through. Every refusal is
a `ProtocolError` carrying one of the protocol's error codes; each front end maps the codes to
its own wire (a WebSocket `error`, an HTTP status, a Wyoming `error` event).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import protocol as P
from .backend import Backend
from .config import ServerConfig
from .metrics import ServerMetrics
from .voices import Voice, VoiceStore, canonical_language
from .worker import Job, WorkerStopped


class ServerView(Protocol):
    """All a front end uses of its server (`app.TTSServer` is one): settings, voices, metrics,
    the model's backend once loaded, and the device worker's queue through `submit` / `cancel`."""

    cfg: ServerConfig
    voices: VoiceStore
    metrics: ServerMetrics
    shutting_down: bool
    started_at: float  # time.time() at start

    @property
    def backend(self) -> Backend | None: ...
    @property
    def languages(self) -> list[str]: ...
    def capabilities(self) -> dict: ...
    def health(self) -> dict: ...
    def check_token(self, presented: str | None) -> bool: ...
    def unavailable(self) -> tuple[str, str] | None: ...
    def default_voice(self) -> str | None: ...
    def check_voice(self, voice_id: Any) -> str: ...
    def voice_list(self) -> list[dict]: ...
    async def speaking_voice(self, voice_id: str | None) -> tuple[Any, str | None]: ...
    async def register_voice(self, msg: P.RegisterVoice) -> Voice: ...
    def submit(self, job: Job) -> None: ...
    def cancel(self, job: Job) -> None: ...
    def append_text(self, job: Job, text: str) -> None: ...
    def end_text(self, job: Job, max_new_frames: int | None = None) -> None: ...


@dataclass(frozen=True)
class Utterance:
    """What to say and how: the front ends' common request."""

    text: str
    voice: str | None = None  # None: the server's default voice (or none, for VoiceDesign)
    language: str = "English"
    sampling: P.Sampling = field(default_factory=P.Sampling)
    instruct: str | None = None
    priority: str = "normal"
    text_open: bool = False  # `text` is only the start of a streamed text (the WebSocket's textStream)
    x_vector_only: bool = False  # a Base voice by its x-vector alone (`VoicePrompt.without_reference`)


def check_text(server: ServerView, text: str, request_id: str | None = None, *, limit: int | None = None,
               allow_empty: bool = False) -> None:
    """INVALID_TEXT for empty (unless `allow_empty`: the start of a streamed text) or over-long
    text (`limit`, default the server's `max_text_chars`), RATE_LIMITED while shutting down, and
    the loading / failed-model code while the model cannot take requests."""
    if server.shutting_down:
        raise P.ProtocolError("RATE_LIMITED", "server is shutting down", request_id)
    if not allow_empty and not text.strip():
        raise P.ProtocolError("INVALID_TEXT", "text is empty", request_id)
    limit = server.cfg.max_text_chars if limit is None else limit
    if len(text) > limit:
        raise P.ProtocolError("INVALID_TEXT", f"text longer than {limit} characters", request_id)
    down = server.unavailable()
    if down is not None:
        raise P.ProtocolError(*down, request_id)


def check_instruct(server: ServerView, instruct: str, request_id: str | None = None) -> None:
    """An instruct is bounded like text, and a Base model takes none (it clones a voice)."""
    if len(instruct) > server.cfg.max_text_chars:
        raise P.ProtocolError("INVALID_TEXT", f"instruct longer than {server.cfg.max_text_chars} characters",
                              request_id)
    b = server.backend
    if instruct and b is not None and b.model_type == "base":
        raise P.ProtocolError("BAD_REQUEST", "instruct is for CustomVoice (1.7B) and VoiceDesign models; this "
                              "Base model clones the voice it is given", request_id)


async def build_request(server: ServerView, utt: Utterance, request_id: str | None = None):
    """The engine request for `utt` with the server's defaults: (GenerationRequest, its sample
    rate). Resolving a Base voice may compute its prompt on the worker (cached after)."""
    try:
        language = canonical_language(utt.language, server.languages)
        prompt, speaker = await server.speaking_voice(utt.voice if utt.voice is not None
                                                      else server.default_voice())
    except P.ProtocolError as exc:
        exc.request_id = request_id
        raise
    except WorkerStopped:
        raise P.ProtocolError("SYNTHESIS_ERROR", "server is shutting down", request_id) from None
    except queue.Full:
        raise P.ProtocolError("RATE_LIMITED", "the device queue is full; retry shortly", request_id) from None
    except Exception as exc:  # noqa: BLE001 - a bad voice file must not look like a server crash
        raise P.ProtocolError("SYNTHESIS_ERROR", f"voice prompt failed: {type(exc).__name__}: {exc}",
                              request_id) from None
    backend = server.backend
    if backend is None:
        raise P.ProtocolError(*(server.unavailable() or ("SYNTHESIS_ERROR", "the model is gone")), request_id)
    if utt.x_vector_only and prompt is not None:
        prompt = prompt.without_reference()
    s = utt.sampling
    try:
        request = backend.make_request(
            utt.text, prompt, language, seed=s.seed if s.seed is not None else server.cfg.default_seed,
            max_new_frames=s.max_frames, max_audio_seconds=server.cfg.max_audio_seconds, speaker=speaker,
            instruct=utt.instruct, text_open=utt.text_open,
            **{attr: getattr(s, attr) for attr in ("greedy", "temperature", "top_k", "top_p", "repetition_penalty")})
    except (TypeError, ValueError) as exc:
        raise P.ProtocolError("BAD_REQUEST", str(exc), request_id) from None
    return request, backend.sample_rate


def streamed_budget(server: ServerView, sampling: P.Sampling, chars: int) -> int | None:
    """The frame budget of a streamed text that has ended with `chars` characters: a whole
    text's of that length, so it stops where one `speak` of the whole text would (its budget
    until then is all of `max_audio_seconds`); None when the client set maxFrames."""
    b = server.backend
    if sampling.max_frames is not None or b is None:
        return None
    return b.frame_budget(chars, server.cfg.max_audio_seconds)


def submit(server: ServerView, job: Job, request_id: str | None = None) -> None:
    """Queue `job` on the device worker, its refusals as protocol errors."""
    try:
        server.submit(job)
    except queue.Full:
        raise P.ProtocolError("RATE_LIMITED", "the device queue is full; retry shortly", request_id) from None
    except WorkerStopped:
        raise P.ProtocolError("SYNTHESIS_ERROR", "server is shutting down", request_id) from None


@dataclass
class Spoken:
    """How one streamed utterance went (filled in while it streams)."""

    sample_rate: int = 0
    samples: int = 0
    started_at: float = field(default_factory=time.monotonic)
    first_audio_s: float | None = None


@contextlib.asynccontextmanager
async def speech(server: ServerView, utt: Utterance, interface: str, label: str = "",
                 request_id: str | None = None, more_text: asyncio.Queue | None = None,
                 ) -> AsyncIterator[tuple[AsyncIterator[np.ndarray], Spoken]]:
    """`async with speech(...) as (chunks, spoken)`: float32 PCM chunks at `spoken.sample_rate`
    as the device makes them. Leaving the block early (a client gone, a cancelled task) frees
    the device slot before the worker's next step. Errors, before or during the stream, are
    ProtocolErrors; every outcome is counted in the server's metrics under `interface`.

    With `utt.text_open`, `utt.text` is only the start of the text and `more_text` brings the
    rest as it is written: strings in order, then None for its end (the front end bounds its
    total and its pauses). The audio is the same as for the whole text at once; the request
    timeout runs from the end of the text."""
    check_text(server, utt.text, request_id, allow_empty=utt.text_open,
               limit=server.cfg.max_streamed_text_chars if utt.text_open else None)
    if utt.text_open and more_text is None:
        raise ValueError("a streamed utterance needs `more_text`")
    if utt.instruct is not None:
        check_instruct(server, utt.instruct, request_id)
    spoken = Spoken()
    events: asyncio.Queue = asyncio.Queue()
    job: Job | None = None
    feeder: asyncio.Task | None = None
    outcome = "cancelled"
    try:
        request, spoken.sample_rate = await build_request(server, utt, request_id)
        job = Job(request, utt.priority, lambda kind, payload: events.put_nowait((kind, payload)), label=label,
                  text_open=utt.text_open)
        submit(server, job, request_id)
        if utt.text_open:
            feeder = asyncio.create_task(_feed(server, job, utt, more_text, events), name=f"text feed {label}")
        deadline = None if utt.text_open else time.monotonic() + server.cfg.request_timeout_s

        async def chunks() -> AsyncIterator[np.ndarray]:
            nonlocal outcome, deadline
            while True:
                try:
                    kind, payload = await asyncio.wait_for(
                        events.get(), None if deadline is None else max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise P.ProtocolError("TIMEOUT", f"request ran past {server.cfg.request_timeout_s:g} s",
                                          request_id) from None
                if kind == "text_end":
                    deadline = time.monotonic() + server.cfg.request_timeout_s
                elif kind == "audio":
                    if spoken.first_audio_s is None:
                        spoken.first_audio_s = time.monotonic() - spoken.started_at
                        server.metrics.first_audio(interface, spoken.first_audio_s)
                    spoken.samples += len(payload)
                    yield payload
                elif kind == "done":
                    outcome = "complete"
                    return
                else:
                    raise P.ProtocolError(*payload, request_id)

        yield chunks(), spoken
    except P.ProtocolError as exc:
        outcome = exc.code
        raise
    except (asyncio.CancelledError, ConnectionError):
        # The front ends' tasks are cancelled when their client goes away (aiohttp's handler
        # cancellation, Wyoming's disconnect), and writes to a gone client raise ConnectionError.
        if outcome == "cancelled":
            outcome = "disconnected"
        raise
    finally:
        if feeder is not None:
            feeder.cancel()
        if job is not None:
            server.cancel(job)  # a no-op for a finished job
        server.metrics.request_done(interface, outcome)
        if spoken.sample_rate:
            server.metrics.audio(interface, spoken.samples / spoken.sample_rate)


async def _feed(server: ServerView, job: Job, utt: Utterance, more_text: asyncio.Queue,
                events: asyncio.Queue) -> None:
    """Hand a streamed job's text to the device worker as it comes; its end (None) sets its
    frame budget and starts the request timeout. A refusal becomes the stream's error."""
    chars = len(utt.text)
    while True:
        piece = await more_text.get()
        try:
            if piece is None:
                server.end_text(job, streamed_budget(server, utt.sampling, chars))
            else:
                chars += len(piece)
                server.append_text(job, piece)
        except queue.Full:
            events.put_nowait(("error", ("RATE_LIMITED", "the device queue is full; retry shortly")))
            return
        except WorkerStopped:
            events.put_nowait(("error", ("SYNTHESIS_ERROR", "server is shutting down")))
            return
        if piece is None:
            events.put_nowait(("text_end", None))
            return
