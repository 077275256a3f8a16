"""One WebSocket connection: the /api/v1/speak session state machine.

A session runs one `speak` at a time; later ones wait in a bounded per-session queue ("high"
before "normal", FIFO within a priority). Each `speak` ends with exactly one `complete`
(`cancelled: true` when it was cancelled) or one `error`. Everything sent goes through one
ordered, byte-bounded send buffer drained by a sender task; a client that lets it overflow
is disconnected instead of buffered without limit.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import queue
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from . import protocol as P
from .resample import StreamResampler
from .speech import ServerView, Utterance, build_request, check_instruct, check_text, streamed_budget, submit
from .voices import canonical_language
from .worker import Job, WorkerStopped

log = logging.getLogger("qwen3tts.server")


@dataclass
class Settings:
    sample_rate: int = P.ENGINE_SAMPLE_RATE
    encoding: str = "pcm16"
    voice: str | None = None
    voice_chosen: bool = False  # False: the server's default voice, resolved when a request starts
    language: str = "English"
    transport: str = "binary"
    contract_id: Any = None
    sampling: P.Sampling = field(default_factory=P.Sampling)
    instruct: str | None = None
    x_vector_only: bool = False


@dataclass
class Running:
    """Loop-side state of one speak request."""

    speak: P.Speak
    settings: Settings
    received_at: float  # monotonic, when the `speak` arrived (T0 as the server sees it)
    job: Job | None = None
    resampler: StreamResampler | None = None
    samples_sent: int = 0
    sequence: int = 0
    first_audio_at: float | None = None
    last_audio_at: float | None = None
    finished: bool = False
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task | None = None
    feed: TextFeed | None = None  # a streamed (textStream) request's text
    text_wait_s: float = 0.0


@dataclass(eq=False)
class TextFeed:
    """The text of a streamed request (`speak` with `textStream`), as `appendText`s bring it.
    Until the request reaches the device worker its pieces wait here."""

    speak: P.Speak
    chars: int
    pieces: list[str] = field(default_factory=list)
    ended: bool = False
    job: Job | None = None
    sampling: P.Sampling | None = None  # its request's, set with `job` (its budget at endText)
    idle_timer: asyncio.TimerHandle | None = None
    # Its audio ended before its text did (the model's end token, maxFrames): the rest of the
    # text is taken and dropped, so an LLM still writing sees no errors.
    spoken: bool = False


_CLOSE = object()


class Session:
    def __init__(self, server: ServerView, ws: ServerConnection, sid: str, authed: bool):
        self.server = server
        self.cfg = server.cfg
        self.ws = ws
        self.sid = sid
        self.authed = authed
        self.settings = Settings(voice=server.default_voice())
        self.waiting: deque[tuple[P.Speak, float, TextFeed | None]] = deque()
        self.current: Running | None = None
        self.feed: TextFeed | None = None  # the streamed request whose text is still open
        self._out: asyncio.Queue = asyncio.Queue()
        self._out_bytes = 0
        self.closing = False
        self.stopping = False  # a `stop` was answered; the session is closing after its flush
        self._register_task: asyncio.Task | None = None
        self._prefetch: asyncio.Task | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.n_requests = 0
        self.n_errors = 0
        self.audio_bytes = 0
        self._tasks: set[asyncio.Task] = set()
        self._sender_task: asyncio.Task | None = None

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def stats(self) -> dict:
        return {"requests": self.n_requests, "errors": self.n_errors, "audioBytes": self.audio_bytes}

    def _log(self, event: str, **fields) -> None:
        log.info(json.dumps({"event": event, "session": self.sid, **fields}))

    # -- sending -----------------------------------------------------------------------------
    def send(self, item: dict | bytes) -> None:
        """Queue a message in order. Overflowing the buffer disconnects the client."""
        if self.closing or (self._sender_task is not None and self._sender_task.done()):
            return  # the connection is gone; the reader loop is about to end
        data = P.dumps(item) if isinstance(item, dict) else item
        size = len(data)
        if self._out_bytes + size > self.cfg.max_send_buffer_bytes:
            self._log("slow_client_disconnect", buffered=self._out_bytes)
            self._abort_all()
            self.closing = True
            # It does not read, so a closing handshake would only wait: drop the TCP connection.
            self.ws.transport.abort()
            return
        self._out_bytes += size
        self._out.put_nowait(data)

    def send_error(self, code: str, message: str, request_id: str | None = None) -> None:
        self.n_errors += 1
        self.server.metrics.error("ws", code)
        self._log("error", code=code, message=message[:200], requestId=request_id)
        self.send(P.error_message(code, message, request_id))

    async def _sender(self) -> None:
        while True:
            item = await self._out.get()
            if item is _CLOSE:
                return
            self._out_bytes -= len(item)
            await self.ws.send(item)

    async def _close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await asyncio.wait_for(self.ws.close(code, reason), 3)
        except Exception:  # noqa: BLE001 - give up politely, then hard
            self.ws.transport.abort()

    async def close_after_flush(self, code: int = 1000, reason: str = "") -> None:
        """Send what is queued, then close (after `stopped` and fatal errors)."""
        self.closing = True
        self._out.put_nowait(_CLOSE)
        try:
            await asyncio.wait_for(asyncio.shield(self._sender_task), 5)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing anyway
            pass
        await self._close(code, reason)

    # -- main loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        self._sender_task = asyncio.get_running_loop().create_task(self._sender())
        backend = self.server.backend
        ready = {"type": "ready", "sessionId": self.sid, "voiceLoaded": self.settings.voice,
                 "modelReady": backend is not None, "capabilities": self.server.capabilities(),
                 "authRequired": not self.authed}
        if backend is not None and backend.is_demo:
            ready["warning"] = "demo checkpoint with random weights: the audio is not speech"
        self.send(ready)
        auth_timer = None
        if not self.authed:
            auth_timer = asyncio.get_running_loop().call_later(self.cfg.auth_timeout_s, self._auth_timeout)
        try:
            async for raw in self.ws:
                if self.closing:
                    break
                if self.stopping:
                    continue  # after `stop` nothing more is answered; the close is on its way
                try:
                    self._dispatch(raw)
                except Exception:  # noqa: BLE001 - a server bug must not kill the session
                    log.exception(json.dumps({"event": "internal_error", "session": self.sid}))
                    self.send_error("SYNTHESIS_ERROR", "internal server error")
        except ConnectionClosed:
            pass
        finally:
            if auth_timer:
                auth_timer.cancel()
            self.closing = True
            self._abort_all()
            for t in (self._register_task, self._prefetch):
                if t and not t.done():
                    t.cancel()
            self._out.put_nowait(_CLOSE)
            try:
                await asyncio.wait_for(self._sender_task, 1)
            except (Exception, asyncio.CancelledError):  # noqa: BLE001
                self._sender_task.cancel()

    def _auth_timeout(self) -> None:
        if not self.authed and not self.closing:
            self.send_error("UNAUTHORIZED", "no valid authToken within "
                            f"{self.cfg.auth_timeout_s:g} s")
            self._spawn(self.close_after_flush(1008, "unauthorized"))

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            msg = P.parse_client_message(raw, self.cfg.max_message_bytes, self.cfg.max_voice_message_bytes)
        except P.ProtocolError as exc:
            if not self.authed:
                return self._unauthorized()
            rid = exc.request_id
            if rid is None and exc.message_type == "appendText" and self.feed is not None:
                rid = self.feed.speak.request_id  # a bad piece is refused; its stream goes on
            return self.send_error(exc.code, exc.message, rid)
        if not self.authed:
            if isinstance(msg, P.Start) and self.server.check_token(msg.auth_token):
                self.authed = True
            else:
                return self._unauthorized()
        try:
            if isinstance(msg, P.Start):
                self._on_start(msg)
            elif isinstance(msg, P.Speak):
                self._on_speak(msg)
            elif isinstance(msg, P.AppendText):
                self._on_append_text(msg)
            elif isinstance(msg, P.EndText):
                self._on_end_text()
            elif isinstance(msg, P.Cancel):
                self._on_cancel()
            elif isinstance(msg, P.Stop):
                self._on_stop(msg)
            elif isinstance(msg, P.RegisterVoice):
                self._on_register(msg)
        except P.ProtocolError as exc:
            self.send_error(exc.code, exc.message, exc.request_id)

    def _unauthorized(self) -> None:
        self.send_error("UNAUTHORIZED", "missing or wrong authToken (send it in `start`)")
        self._spawn(self.close_after_flush(1008, "unauthorized"))
        self.closing = True

    # -- handlers ----------------------------------------------------------------------------
    def _on_start(self, msg: P.Start) -> None:
        s = self.settings
        voice, chosen = s.voice, s.voice_chosen
        if msg.voice is not None:
            voice, chosen = self.server.check_voice(msg.voice), True  # VOICE_NOT_FOUND
        if msg.instruct is not None:
            check_instruct(self.server, msg.instruct)
        language = s.language
        if msg.language is not None:
            language = canonical_language(msg.language, self.server.languages)
        self.settings = Settings(
            sample_rate=msg.sample_rate or s.sample_rate,
            encoding=msg.encoding or s.encoding,
            voice=voice,
            voice_chosen=chosen,
            language=language,
            transport=msg.transport or s.transport,
            contract_id=msg.contract_id if msg.contract_id is not None else s.contract_id,
            sampling=s.sampling.merged(msg.sampling),
            instruct=msg.instruct if msg.instruct is not None else s.instruct,
            x_vector_only=msg.x_vector_only if msg.x_vector_only is not None else s.x_vector_only,
        )
        n = self.settings
        reply = {"type": "started", "sampleRate": n.sample_rate, "encoding": n.encoding,
                 "voice": n.voice, "language": n.language, "transport": n.transport}
        if n.instruct is not None:
            reply["instruct"] = n.instruct
        if n.x_vector_only:
            reply["xVectorOnly"] = True
        if n.contract_id is not None:
            reply["contractId"] = n.contract_id
        self._log("start", sampleRate=n.sample_rate, encoding=n.encoding, voice=n.voice,
                  language=n.language, transport=n.transport)
        self.send(reply)
        # Load the voice prompt now, so the first `speak` does not wait for it.
        if self.server.backend is not None and n.voice is not None:
            self._prefetch = self._spawn(self._prefetch_voice(n.voice))

    async def _prefetch_voice(self, voice_id: str) -> None:
        try:
            await self.server.speaking_voice(voice_id)
        except Exception as exc:  # noqa: BLE001 - the speak will report it
            self._log("voice_prefetch_failed", voice=voice_id, error=repr(exc))

    def _on_speak(self, msg: P.Speak) -> None:
        rid = msg.request_id
        if msg.text_stream and self.feed is not None and self.feed.spoken:
            self._close_feed(self.feed)  # its audio is over: a new streamed request may start
        if msg.text_stream and self.feed is not None:
            raise P.ProtocolError("BAD_REQUEST", "a streamed request is open on this session: send endText (or "
                                  "cancel) before the next textStream speak", rid)
        check_text(self.server, msg.text, rid, limit=self.cfg.max_streamed_text_chars if msg.text_stream else None,
                   allow_empty=msg.text_stream)
        if msg.instruct is not None:
            check_instruct(self.server, msg.instruct, rid)
        busy = self.current is not None
        if busy and len(self.waiting) >= self.cfg.max_queued_per_session:
            raise P.ProtocolError("RATE_LIMITED", f"more than {self.cfg.max_queued_per_session} "
                                  "requests queued on this session", rid)
        feed = None
        if msg.text_stream:
            feed = self.feed = TextFeed(msg, len(msg.text))
            self._arm_idle_timer(feed)
        now = time.monotonic()
        if msg.priority == "high":
            # After the last queued high request, ahead of every queued normal one.
            idx = sum(1 for m, _, _ in self.waiting if m.priority == "high")
            self.waiting.insert(idx, (msg, now, feed))
        else:
            self.waiting.append((msg, now, feed))
        self._next()

    # -- streamed text -------------------------------------------------------------------------
    def _open_feed(self) -> TextFeed:
        if self.feed is None:
            raise P.ProtocolError("BAD_REQUEST", "no streamed request is open on this session (speak with "
                                  "\"textStream\": true first; after endText its text is closed)")
        return self.feed

    def _on_append_text(self, msg: P.AppendText) -> None:
        feed = self._open_feed()
        if feed.spoken:
            return
        if feed.chars + len(msg.text) > self.cfg.max_streamed_text_chars:
            return self._fail_feed(feed, "INVALID_TEXT", "the streamed text grew past "
                                   f"{self.cfg.max_streamed_text_chars} characters")
        feed.chars += len(msg.text)
        self._arm_idle_timer(feed)
        self._feed(feed, msg.text)

    def _on_end_text(self) -> None:
        feed = self._open_feed()
        feed.ended = True
        self._close_feed(feed)
        self._feed(feed, None)
        run = self.current
        if run is not None and run.feed is feed and run.job is not None and run.timer is None:
            run.timer = asyncio.get_running_loop().call_later(self.cfg.request_timeout_s, self._on_timeout, run)

    def _feed(self, feed: TextFeed, text: str | None) -> None:
        """A piece of text (None: the end) to the device worker, or kept until the request is there."""
        if feed.spoken:
            return
        if feed.job is None:
            if text is not None:
                feed.pieces.append(text)
            return
        try:
            if text is None:
                self.server.end_text(feed.job, streamed_budget(self.server, feed.sampling, feed.chars))
            else:
                self.server.append_text(feed.job, text)
        except (queue.Full, WorkerStopped):
            self._fail_feed(feed, "RATE_LIMITED", "the device queue is full; retry shortly")

    def _arm_idle_timer(self, feed: TextFeed) -> None:
        if feed.idle_timer is not None:
            feed.idle_timer.cancel()
        feed.idle_timer = asyncio.get_running_loop().call_later(self.cfg.text_idle_timeout_s, self._on_text_idle, feed)

    def _close_feed(self, feed: TextFeed) -> None:
        if feed.idle_timer is not None:
            feed.idle_timer.cancel()
            feed.idle_timer = None
        if self.feed is feed:
            self.feed = None

    def _on_text_idle(self, feed: TextFeed) -> None:
        if self.feed is feed:
            self._fail_feed(feed, "TIMEOUT", f"no appendText for {self.cfg.text_idle_timeout_s:g} s (send endText "
                            "when the text is complete)")

    def _fail_feed(self, feed: TextFeed, code: str, message: str) -> None:
        """End a streamed request with an error, running or still queued."""
        self._close_feed(feed)
        run = self.current
        if run is not None and run.feed is feed:
            return self._fail(run, code, message)
        for i, (speak, _, queued) in enumerate(self.waiting):
            if queued is feed:
                del self.waiting[i]
                self.send_error(code, message, speak.request_id)
                self.server.metrics.request_done("ws", code)
                return

    def _next(self) -> None:
        if self.current is not None or self.closing:
            return
        if not self.waiting:
            self.idle.set()
            return
        self.idle.clear()
        speak, t0, feed = self.waiting.popleft()
        run = Running(speak=speak, settings=self.settings, received_at=t0, feed=feed)
        self.current = run
        self.n_requests += 1
        run.task = self._spawn(self._launch(run))

    async def _launch(self, run: Running) -> None:
        """Resolve the voice prompt, build the request, hand it to the device worker."""
        s, speak, rid = run.settings, run.speak, run.speak.request_id
        utt = Utterance(speak.text, s.voice if s.voice_chosen else None, s.language,
                        s.sampling.merged(speak.sampling), speak.instruct if speak.instruct is not None
                        else s.instruct, speak.priority, text_open=run.feed is not None,
                        x_vector_only=speak.x_vector_only if speak.x_vector_only is not None else s.x_vector_only)
        try:
            request, engine_rate = await build_request(self.server, utt, rid)
            if run is not self.current or run.finished:
                return  # cancelled while the prompt was loading
            run.resampler = StreamResampler(engine_rate, s.sample_rate)
            run.job = Job(request, speak.priority, lambda kind, payload: self._on_event(run, kind, payload),
                          label=f"{self.sid}/{rid or self.n_requests}", text_open=run.feed is not None)
            submit(self.server, run.job, rid)
        except P.ProtocolError as exc:
            return self._fail(run, exc.code, exc.message)
        if run.feed is not None:  # what arrived while it was queued; the request timeout starts at endText
            run.feed.job, run.feed.sampling = run.job, utt.sampling
            for piece in run.feed.pieces:
                self._feed(run.feed, piece)
            run.feed.pieces.clear()
            if run.feed.ended:
                self._feed(run.feed, None)
        if run.feed is None or run.feed.ended:
            run.timer = asyncio.get_running_loop().call_later(self.cfg.request_timeout_s, self._on_timeout, run)
        self._log("speak", requestId=rid, chars=len(speak.text), priority=speak.priority,
                  voice=s.voice, language=s.language, sampleRate=s.sample_rate)

    # -- events from the worker (on the loop) ------------------------------------------------
    def _on_event(self, run: Running, kind: str, payload: Any) -> None:
        if run.finished or run is not self.current:
            return  # cancelled or timed out: late audio is dropped
        if kind == "audio":
            self._send_audio(run, run.resampler.process(payload), final=False)
        elif kind == "done":
            run.text_wait_s = (payload or {}).get("text_wait_s", 0.0)
            self._send_audio(run, run.resampler.flush(), final=True)
            self._complete(run, cancelled=False)
        elif kind == "error":
            code, message = payload
            self._fail(run, code, message)

    def _send_audio(self, run: Running, samples, final: bool) -> None:
        s = run.settings
        if len(samples) == 0 and not (final and s.transport == "json"):
            return
        now = time.monotonic()
        if run.first_audio_at is None and len(samples):
            run.first_audio_at = now
            self.server.metrics.first_audio("ws", now - run.received_at)
            self._log("first_audio", requestId=run.speak.request_id,
                      ms=round((now - run.received_at) * 1000, 1))
        run.last_audio_at = now
        data = P.encode_pcm(samples, s.encoding)
        run.samples_sent += len(samples)
        self.audio_bytes += len(data)
        if s.transport == "json":
            self.send({"type": "audioChunk", "data": base64.b64encode(data).decode("ascii"),
                       "sequenceNumber": run.sequence, "isFinal": final,
                       "timestampMs": round(1000 * (run.samples_sent - len(samples)) / s.sample_rate, 3)})
            run.sequence += 1
        else:
            self.send(data)

    def _finish(self, run: Running, outcome: str) -> None:
        run.finished = True
        if run.feed is not None:
            if run.feed.ended or outcome != "complete":
                self._close_feed(run.feed)
            else:  # the audio ended first: take the rest of the text quietly until endText
                run.feed.spoken = True
                if run.feed.idle_timer is not None:
                    run.feed.idle_timer.cancel()
        self.server.metrics.request_done("ws", outcome)
        self.server.metrics.audio("ws", run.samples_sent / run.settings.sample_rate)
        if run.timer:
            run.timer.cancel()
        if run.job is not None:
            self.server.cancel(run.job)  # a no-op for a finished job; frees a running slot
        if self.current is run:
            self.current = None

    def _summary(self, run: Running) -> dict:
        end = run.last_audio_at or time.monotonic()
        out = {"durationMs": round((end - run.received_at) * 1000, 1),
               "charactersProcessed": run.feed.chars if run.feed is not None else len(run.speak.text),
               "audioLengthMs": round(1000 * run.samples_sent / run.settings.sample_rate, 3),
               "samples": run.samples_sent, "sampleRate": run.settings.sample_rate}
        if run.feed is not None:
            out["textWaitMs"] = round(1000 * run.text_wait_s, 1)
        if run.first_audio_at is not None:
            out["firstAudioMs"] = round((run.first_audio_at - run.received_at) * 1000, 1)
        if run.speak.request_id is not None:
            out["requestId"] = run.speak.request_id
        return out

    def _complete(self, run: Running, cancelled: bool) -> None:
        self._finish(run, "cancelled" if cancelled else "complete")
        msg = {"type": "complete", **self._summary(run)}
        if cancelled:
            msg["cancelled"] = True
        fields = {k: v for k, v in msg.items() if k != "type"}
        fields["cancelled"] = cancelled
        self._log("complete", **fields)
        self.send(msg)
        self._next()

    def _fail(self, run: Running, code: str, message: str) -> None:
        if run.finished:
            return
        self._finish(run, code)
        self.send_error(code, message, run.speak.request_id)
        self._next()

    def _on_timeout(self, run: Running) -> None:
        if not run.finished:
            self._fail(run, "TIMEOUT", f"request ran past {self.cfg.request_timeout_s:g} s")

    def _drop_waiting(self, error: tuple[str, str] | None = None) -> None:
        while self.waiting:
            speak, t0, feed = self.waiting.popleft()
            if feed is not None:
                self._close_feed(feed)
            if error:
                self.send_error(error[0], error[1], speak.request_id)
            else:
                msg = {"type": "complete", "durationMs": 0.0, "charactersProcessed": 0,
                       "audioLengthMs": 0.0, "samples": 0, "sampleRate": self.settings.sample_rate,
                       "cancelled": True}
                if speak.request_id is not None:
                    msg["requestId"] = speak.request_id
                self.send(msg)

    def _on_cancel(self) -> None:
        self._drop_waiting()
        run = self.current
        if run is not None:
            self._log("cancel", requestId=run.speak.request_id)
            self._complete(run, cancelled=True)  # stops the audio now; the slot frees before the next step
        self.idle.set()

    def _on_stop(self, msg: P.Stop) -> None:
        if self.stopping:  # one `stopped` per session, however many `stop`s arrive before the close
            return
        self.stopping = True
        self._on_cancel()
        reason = msg.reason or "client stop"
        self.send({"type": "stopped", "reason": reason})
        self._log("stop", reason=reason)
        self._spawn(self.close_after_flush(1000, "stopped"))

    def _abort_all(self) -> None:
        """Connection gone: free the device slot and forget queued work (nothing is sent)."""
        for _, _, feed in self.waiting:
            if feed is not None:
                self._close_feed(feed)
        self.waiting.clear()
        run = self.current
        if run is not None and not run.finished:
            self._finish(run, "disconnected")
        self.idle.set()

    def _on_register(self, msg: P.RegisterVoice) -> None:
        if self._register_task is not None and not self._register_task.done():
            raise P.ProtocolError("RATE_LIMITED", "one registerVoice at a time per session")
        down = self.server.unavailable()
        if down is not None:
            raise P.ProtocolError(*down)
        self._register_task = self._spawn(self._register(msg))

    async def _register(self, msg: P.RegisterVoice) -> None:
        try:
            voice = await self.server.register_voice(msg)
        except P.ProtocolError as exc:
            return self.send_error(exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001
            return self.send_error("SYNTHESIS_ERROR", f"registerVoice failed: {type(exc).__name__}: {exc}")
        self.send({"type": "voiceRegistered", "voiceId": voice.id, "voice": voice.public(),
                   "xVectorOnly": voice.transcript is None})

    # -- server shutdown ---------------------------------------------------------------------
    async def shutdown(self, grace_s: float) -> None:
        """Let the running and queued requests finish within `grace_s`, then cancel, then close."""
        if self.closing:
            return
        try:
            await asyncio.wait_for(self.idle.wait(), grace_s)
        except TimeoutError:
            pass
        if self.closing:
            return
        self._drop_waiting(("CANCELLED", "server is shutting down"))
        run = self.current
        if run is not None and not run.finished:
            self._fail(run, "CANCELLED", "server is shutting down")
        self.send({"type": "stopped", "reason": "server shutdown"})
        await self.close_after_flush(1001, "server shutdown")
