"""The websockets server: HTTP routes, connection admission, and the server lifecycle.

One asyncio loop serves every connection; the model lives on the device worker thread
(server/worker.py). Per-connection protocol state is in server/session.py.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import json
import logging
import secrets
import threading
import time
from http import HTTPStatus
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from qwen3tts_jax.config import LANGUAGES_12HZ

from . import protocol as P
from .backend import DEMO_WARNING, Backend, display_languages
from .config import ServerConfig
from .demo_page import page_response
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServerMetrics
from .openai_api import OpenAIApi
from .session import Session
from .voices import VoiceStore
from .worker import DeviceWorker, Job, WorkerStopped
from .wyoming import WyomingServer

log = logging.getLogger("qwen3tts.server")

class TTSServer:
    """`loader()` builds the Backend (on the worker thread). With `cfg.devices` set, one device
    worker per device calls `loader(device)` (the index into `jax.devices()`) under that device
    as its default: data-parallel slots, each request placed on the least-loaded device."""

    def __init__(self, cfg: ServerConfig, loader, model_name: str = "?"):
        self.cfg = cfg
        self.model_name = model_name
        self._loader = loader
        self.voices = VoiceStore(cfg.voices_dir, cache_size=cfg.prompt_cache_size)
        self.sessions: dict[str, Session] = {}
        self.workers: list[DeviceWorker] = []
        self._load_lock = threading.Lock()
        self._server: Server | None = None
        self._ids = itertools.count(1)
        self.shutting_down = False
        self.started_at = time.time()
        self._warm = None
        self.http: OpenAIApi | None = None
        self.wyoming: WyomingServer | None = None
        self.metrics = ServerMetrics()
        self.metrics.read_gauges(
            batch_slots=lambda: cfg.batch_slots * max(1, len(self.workers)),
            sessions=lambda: len(self.sessions),
            model_ready=lambda: float(self.backend is not None and not self.shutting_down))

    # -- properties used by sessions ---------------------------------------------------------
    @property
    def worker(self) -> DeviceWorker | None:
        """The first device's worker: voice prompts are computed there (they are numpy, used on
        every device)."""
        return self.workers[0] if self.workers else None

    @property
    def backend(self) -> Backend | None:
        """The loaded model (the first device's), once every device's worker serves."""
        if not self.workers or any(w.state != "ready" for w in self.workers):
            return None
        return self.worker.backend

    def worker_threads(self) -> list[threading.Thread]:
        return [w.thread for w in self.workers]

    def _least_loaded(self) -> DeviceWorker:
        ready = [w for w in self.workers if w.state == "ready"]
        if not ready:
            raise WorkerStopped(self.worker.state if self.worker else "starting")
        return min(ready, key=lambda w: (w.load, w.index))

    @property
    def languages(self) -> list[str]:
        b = self.backend
        return list(b.languages) if b else display_languages(LANGUAGES_12HZ)  # until the model is loaded

    def unavailable(self) -> tuple[str, str] | None:
        """(code, message) while the model cannot take requests (loading or failed), else None."""
        if self.backend is not None:
            return None
        failed = [w for w in self.workers if w.state == "failed"]
        if failed:
            return "SYNTHESIS_ERROR", f"model failed to load: {failed[0].error}"
        return "MODEL_LOADING", "the model is still loading; retry shortly"

    def default_voice(self) -> str | None:
        """The voice of a session that names none: the voice store's default for Base models (and
        while the model loads), the first preset speaker for CustomVoice, none for VoiceDesign."""
        b = self.backend
        return self.voices.default_id() if b is None or b.clones_voices else b.default_voice()

    def check_voice(self, voice_id) -> str:
        """`voice_id` as the loaded model knows it (VOICE_NOT_FOUND otherwise): a stored voice for
        Base models, a preset speaker (case-insensitive) for CustomVoice."""
        b = self.backend
        if b is None or b.clones_voices:
            return self.voices.get(voice_id).id
        if isinstance(voice_id, str) and voice_id.lower() in b.speakers:
            return voice_id.lower()
        if b.speakers:
            raise P.ProtocolError("VOICE_NOT_FOUND", f"unknown voice {str(voice_id)[:80]!r}; this CustomVoice "
                                  f"model's voices are its preset speakers {b.speakers}")
        raise P.ProtocolError("VOICE_NOT_FOUND", "this VoiceDesign model has no voices: describe the voice "
                              "with `instruct`")

    async def speaking_voice(self, voice_id: str | None) -> tuple[object | None, str | None]:
        """(voice prompt, preset speaker) to speak with: a Base voice's prompt (cached, computed on
        the worker), or a CustomVoice speaker; (None, None) for VoiceDesign."""
        b = self.backend
        if b is not None and not b.clones_voices:
            return None, (self.check_voice(voice_id) if voice_id is not None else None)
        return await self.voices.prompt(self.voices.get(voice_id), self.worker), None

    def voice_list(self) -> list[dict]:
        """GET /api/v1/voices: the stored voices (Base), or the preset speakers with the languages
        they speak (CustomVoice: every language of the model, and a dialect speaker's dialect)."""
        b = self.backend
        if b is None or b.clones_voices:
            return [v.public() for v in self.voices.list()]
        return [{"id": name, "name": name, "languages": self.languages, "dialect": b.spoken_dialects.get(name),
                 "isDefault": name == b.default_voice(), "preset": True} for name in b.speakers]

    async def register_voice(self, msg: P.RegisterVoice):
        """Validate, store and compute a new voice (see VoiceStore.register); Base models only."""
        b = self.backend
        if b is not None and not b.clones_voices:
            raise P.ProtocolError("BAD_REQUEST", f"registerVoice clones a voice, which only Base models do; this "
                                  f"server runs a {b.model_type} model")
        return await self.voices.register(msg, self.worker, self.languages)

    def submit(self, job: Job) -> None:
        """Queue a job on the least-loaded device (queue.Full when saturated, WorkerStopped when down)."""
        worker = self._least_loaded()
        worker.submit(job)
        job.worker = worker

    def cancel(self, job: Job) -> None:
        if job.worker is not None:
            job.worker.cancel(job)

    def append_text(self, job: Job, text: str) -> None:
        """More of a streamed job's text; queue.Full when the worker is saturated."""
        if job.worker is None:
            raise WorkerStopped("not submitted")
        job.worker.append_text(job, text)

    def end_text(self, job: Job, max_new_frames: int | None = None) -> None:
        """A streamed job's text is complete; `max_new_frames` becomes its budget (see
        `speech.streamed_budget`). queue.Full when the worker is saturated."""
        if job.worker is None:
            raise WorkerStopped("not submitted")
        job.worker.end_text(job, max_new_frames)

    def check_token(self, presented: str | None) -> bool:
        if self.cfg.auth_token is None:
            return True
        if not isinstance(presented, str):
            return False
        return hmac.compare_digest(presented.encode(), self.cfg.auth_token.encode())

    def capabilities(self) -> dict:
        b = self.backend
        return {"streaming": True, "languages": self.languages, "encodings": list(P.ENCODINGS),
                "sampleRates": list(P.SAMPLE_RATES), "transports": list(P.TRANSPORTS),
                "priorities": list(P.PRIORITIES), "maxTextChars": self.cfg.max_text_chars,
                "registerVoice": b is None or b.clones_voices,
                "textStream": True, "maxStreamedTextChars": self.cfg.max_streamed_text_chars,
                "textIdleTimeoutMs": round(1000 * self.cfg.text_idle_timeout_s),
                # None while the model loads
                "modelType": b.model_type if b else None, "speakers": list(b.speakers) if b else [],
                "instruct": b.supports_instruct if b else False}

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        devices = [None] if self.cfg.devices is None else list(range(self.cfg.devices))
        for i, device in enumerate(devices):
            worker = DeviceWorker(functools.partial(self._load_and_warm, device), loop, self.cfg.batch_slots,
                                  max_commands=4 * self.cfg.max_sessions + 64, name=f"device-worker-{i}",
                                  on_step=functools.partial(self.metrics.step, device=str(i)), device=device,
                                  index=i)
            self.metrics.read_device(str(i), active_slots=lambda w=worker: w.active,
                                     queued_requests=lambda w=worker: w.pending)
            self.workers.append(worker)
            worker.start()
        self._server = await serve(
            self._handle, self.cfg.host, self.cfg.port,
            process_request=self._process_request,
            max_size=self.cfg.max_voice_message_bytes,
            compression=None,  # PCM does not compress; deflate would only burn CPU
            max_queue=64,
            write_limit=64 * 1024,
            close_timeout=2,
            ping_interval=20, ping_timeout=20,
            server_header="qwen3tts-jax",
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(json.dumps({"event": "listening", "host": self.cfg.host, "port": self.port,
                             "url": f"ws://{self.cfg.host}:{self.port}{P.SPEAK_PATH}",
                             "auth": self.cfg.auth_token is not None}))
        if self.cfg.http_port is not None:
            self.http = OpenAIApi(self, public_listings=self.cfg.public_listings)
            await self.http.start(self.cfg.host, self.cfg.http_port)
        if self.cfg.wyoming_port is not None:
            self.wyoming = WyomingServer(self)
            await self.wyoming.start(self.cfg.host, self.cfg.wyoming_port)
        loop.create_task(self._after_load())

    def _load_and_warm(self, device: int | None = None) -> Backend:
        """Worker-thread body before serving: load, compute the default voice prompt, compile."""
        t0 = time.perf_counter()
        with self._load_lock:  # one load at a time: devices share the demo build and the conversion cache
            backend = self._loader() if device is None else self._loader(device)
        log.info(json.dumps({"event": "model_loaded", "model": self.model_name, "device": device,
                             "seconds": round(time.perf_counter() - t0, 2), "demo": backend.is_demo,
                             "slots": self.cfg.batch_slots, "sampleRate": backend.sample_rate}))
        if backend.is_demo:
            log.warning(json.dumps({"event": "demo_weights", "message": DEMO_WARNING}))
        default = self.voices.default_id() if backend.clones_voices else backend.default_voice()
        if self.cfg.warmup and (default is not None or not backend.clones_voices):
            try:
                t0 = time.perf_counter()
                if backend.clones_voices:
                    voice = self.voices.get(default)
                    prompt = self.voices.load_or_compute(backend, voice, self.voices.fingerprint(voice))
                    self._warm = (voice, prompt)
                    request = backend.defaults.request("Warm up.", prompt, "auto", seed=0, max_new_frames=4)
                else:
                    request = backend.defaults.request("Warm up.", None, "auto", speaker=default, seed=0,
                                                       max_new_frames=4)
                _warmup(backend, request)
                log.info(json.dumps({"event": "warmup_done", "voice": default,
                                     "seconds": round(time.perf_counter() - t0, 2)}))
            except Exception as exc:  # noqa: BLE001 - warm-up is best effort
                log.warning(json.dumps({"event": "warmup_failed", "error": repr(exc)}))
        return backend

    async def _after_load(self) -> None:
        ok = all(await asyncio.gather(*(w.loaded for w in self.workers)))
        if ok and self._warm is not None:
            self.voices.remember(self._warm[0], self.worker.backend, self._warm[1])
            self._warm = None

    async def shutdown(self) -> None:
        """Stop accepting, let running requests finish (up to the grace period), close, stop the worker."""
        if self.shutting_down:
            return
        self.shutting_down = True
        log.info(json.dumps({"event": "shutdown_begin", "sessions": len(self.sessions)}))
        if self._server is not None:
            self._server.close(close_connections=False)
        sessions = list(self.sessions.values())
        # WebSocket sessions and HTTP streams drain side by side, each within the grace period.
        await asyncio.gather(*(s.shutdown(self.cfg.shutdown_grace_s) for s in sessions),
                             *([self.http.stop()] if self.http else []),
                             *([self.wyoming.stop()] if self.wyoming else []), return_exceptions=True)
        if self._server is not None:
            self._server.close(close_connections=True)
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except TimeoutError:
                pass
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.workers))
        log.info(json.dumps({"event": "shutdown_done"}))

    # -- HTTP --------------------------------------------------------------------------------
    def _json(self, status: HTTPStatus, body: dict) -> Response:
        data = json.dumps(body).encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                           ("Cache-Control", "no-store"), ("Connection", "close")])
        return Response(status.value, status.phrase, headers, data)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == P.SPEAK_PATH:
            if request.headers.get("Upgrade", "").lower() != "websocket":
                return self._json(HTTPStatus.UPGRADE_REQUIRED,
                                  {"error": "connect with a WebSocket client"})
            return None
        if path == P.HEALTH_PATH:
            return self._json(HTTPStatus.OK if self.backend and not self.shutting_down
                              else HTTPStatus.SERVICE_UNAVAILABLE, self.health())
        if path == P.METRICS_PATH:
            data = self.metrics.exposition()
            return Response(200, "OK", Headers([("Content-Type", METRICS_CONTENT_TYPE),
                                                ("Content-Length", str(len(data))), ("Connection", "close")]), data)
        if path == P.VOICES_PATH:
            if not self.check_token(_bearer(request.headers)):
                return self._json(HTTPStatus.UNAUTHORIZED,
                                  {"error": "UNAUTHORIZED", "message": "send Authorization: Bearer <token>"})
            return self._json(HTTPStatus.OK, {"voices": self.voice_list()})
        page = page_response(path)  # the browser page at /
        if page is not None:
            return page
        return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def health(self) -> dict:
        w = self.worker
        states = {x.state for x in self.workers}
        status = "shutting_down" if self.shutting_down else (
            "ok" if self.backend else "failed" if "failed" in states else "loading" if w else "starting")
        out = {"status": status, "model": self.model_name, "sessions": len(self.sessions),
               "maxSessions": self.cfg.max_sessions, "batchSlots": self.cfg.batch_slots,
               "uptimeS": round(time.time() - self.started_at, 1)}
        if w is not None:
            devices = [{"device": x.index, "placement": x.placement, "state": x.state, "activeSlots": x.active,
                        "pendingRequests": x.pending, "steps": x.steps, "stepSeconds": round(x.step_seconds, 4),
                        "admits": x.admits, "admitSeconds": round(x.admit_seconds, 4)} for x in self.workers]
            out.update({k: sum(d[k] for d in devices) for k in ("activeSlots", "pendingRequests", "steps",
                                                                 "stepSeconds", "admits", "admitSeconds")})
            out["stepSeconds"] = round(out["stepSeconds"], 4)
            out["admitSeconds"] = round(out["admitSeconds"], 4)
            out["devices"] = devices
            errors = [x.error for x in self.workers if x.error]
            if errors:
                out["error"] = errors[0]
        if self.backend is not None:
            out["demoWeights"] = self.backend.is_demo
        return out

    # -- WebSocket ---------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        sid = f"s{next(self._ids)}-{secrets.token_hex(3)}"
        peer = ws.remote_address[0] if ws.remote_address else "?"
        if self.shutting_down or len(self.sessions) >= self.cfg.max_sessions:
            log.info(json.dumps({"event": "session_rejected", "session": sid, "peer": peer,
                                 "sessions": len(self.sessions)}))
            msg = "server is shutting down" if self.shutting_down else (
                f"too many sessions (limit {self.cfg.max_sessions})")
            try:
                await ws.send(P.dumps(P.error_message("RATE_LIMITED", msg)))
                await ws.close(1013, "try again later")
            except Exception:  # noqa: BLE001 - the peer may already be gone
                pass
            return
        header_ok = self.cfg.auth_token is not None and self.check_token(_bearer(ws.request.headers))
        session = Session(self, ws, sid, authed=self.cfg.auth_token is None or header_ok)
        self.sessions[sid] = session
        log.info(json.dumps({"event": "session_open", "session": sid, "peer": peer,
                             "sessions": len(self.sessions)}))
        try:
            await session.run()
        finally:
            self.sessions.pop(sid, None)
            log.info(json.dumps({"event": "session_closed", "session": sid, **session.stats()}))


def _bearer(headers: Headers) -> str | None:
    value = headers.get("Authorization", "")
    if value.lower().startswith("bearer "):
        return value[7:].strip()
    return None


def _warmup(backend: Backend, request) -> None:
    """Run a few decode steps on slot 0 so the first request does not pay for compilation."""
    engine = backend.engine
    if hasattr(engine, "warmup"):  # every attention span: long streams never stall on a compile
        engine.warmup()
    engine.admit(0, request)
    try:
        for _ in range(4):
            out = engine.step()
            if 0 in out and out[0].finished:
                break
    finally:
        engine.release(0)
