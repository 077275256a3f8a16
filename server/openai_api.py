"""The OpenAI-compatible HTTP API (aiohttp, on its own port in the server's asyncio loop).

`POST /v1/audio/speech` as OpenAI defines it, so the tools people run (the openai SDKs, Open
WebUI, SillyTavern, LibreChat, LiteLLM, Pipecat, LiveKit) can point their base URL here; plus the
listings those clients look for (`GET /v1/audio/voices`, `/v1/audio/models`, `/v1/models`), a
voice upload (`POST /v1/audio/voices`, the HTTP twin of `registerVoice`), `/healthz` and
`/metrics`. It shares the WebSocket server's device worker, voices, limits, token and logs
through the same `ServerView` (server/speech.py), so the same text, voice and seed give the
same samples on either port. docs/PROTOCOL.md ("OpenAI-compatible HTTP API") is the reference.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status
codes its SDK acts on (it retries 429 and 5xx, honouring `Retry-After` and `x-should-retry`).
A client that disconnects mid-stream cancels its handler (`handler_cancellation`), which frees
its device slot before the worker's next step.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from . import protocol as P
from .audio_formats import CONTENT_TYPES, FORMATS, UnsupportedFormat, encoder
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .resample import StreamResampler
from .speech import ServerView, Utterance, speech

log = logging.getLogger("qwen3tts.server")

OUTPUT_RATE = 24000  # OpenAI's pcm is 24 kHz s16le mono; every format here uses the same rate
MODEL_ID = "qwen3-tts"
# OpenAI's built-in voice names: clients that only know these (Pipecat checks them) get the
# server's default voice, unless a voice of that id exists.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar")
STREAM_FORMATS = ("audio", "sse")
# The speak extensions, as the SDK's extra_body sends them: snake_case -> the wire's camelCase.
SNAKE_TO_CAMEL = {"top_k": "topK", "top_p": "topP", "repetition_penalty": "repetitionPenalty",
                  "max_frames": "maxFrames"}

# protocol error code -> (HTTP status, OpenAI error type, param, retry-after seconds or None)
STATUS = {
    "INVALID_TEXT": (400, "invalid_request_error", "input", None),
    "VOICE_NOT_FOUND": (400, "invalid_request_error", "voice", None),
    "BAD_REQUEST": (400, "invalid_request_error", None, None),
    "UNAUTHORIZED": (401, "invalid_request_error", None, None),
    "RATE_LIMITED": (429, "rate_limit_error", None, 1),
    "MODEL_LOADING": (503, "server_error", None, 5),
    "CANCELLED": (503, "server_error", None, 1),
    "TIMEOUT": (504, "server_error", None, None),
    "SYNTHESIS_ERROR": (500, "server_error", None, None),
}


class ApiError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        status, self.type, default_param, self.retry_after = STATUS[code]
        self.status = status
        self.param = param if param is not None else default_param

    @classmethod
    def of(cls, exc: P.ProtocolError, param: str | None = None) -> ApiError:
        """`param` defaults to the field the error names."""
        return cls(exc.code, exc.message, param if param is not None else exc.field)

    def body(self) -> dict:
        code = "invalid_api_key" if self.code == "UNAUTHORIZED" else self.code.lower()
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": code}}

    def response(self, request_id: str) -> web.Response:
        headers = {"x-request-id": request_id}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.status >= 500 and self.retry_after is None:
            headers["x-should-retry"] = "false"  # a retry would fail the same way
        return web.json_response(self.body(), status=self.status, headers=headers)


@dataclass(frozen=True)
class SpeechRequest:
    utterance: Utterance
    response_format: str
    stream_format: str


def parse_speech(server: ServerView, body) -> SpeechRequest:
    """The body of `POST /v1/audio/speech` -> what to say and how to send it (ApiError if bad)."""
    if not isinstance(body, dict):
        raise ApiError("BAD_REQUEST", "the body must be a JSON object")
    try:
        text = P.get_field(body, "input", str, required=True)  # a lone surrogate is INVALID_TEXT
    except P.ProtocolError as exc:
        raise ApiError.of(exc) from None
    fmt = body.get("response_format") or "mp3"  # OpenAI's default, which Open WebUI and LibreChat rely on
    if fmt not in FORMATS:
        raise ApiError("BAD_REQUEST", f"response_format must be one of {list(FORMATS)}", "response_format")
    stream_format = body.get("stream_format") or "audio"
    if stream_format not in STREAM_FORMATS:
        raise ApiError("BAD_REQUEST", f"stream_format must be one of {list(STREAM_FORMATS)}", "stream_format")
    speed = body.get("speed", 1.0)
    if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float) or speed != 1.0):
        raise ApiError("BAD_REQUEST", "speed must be 1.0: Qwen3-TTS has no speaking-rate control (ask for a "
                       "slower or faster voice in `instructions` on CustomVoice and VoiceDesign models)", "speed")
    ext = {SNAKE_TO_CAMEL.get(k, k): v for k, v in body.items()}
    try:
        sampling = P.parse_sampling(ext)
        language = P.get_field(ext, "language", str) or "auto"
        instruct = P.get_field(ext, "instructions", str)
        if instruct is None:
            instruct = P.get_field(ext, "instruct", str)
        x_vector_only = bool(P.get_field(ext, "xVectorOnly", bool) or P.get_field(ext, "x_vector_only", bool))
    except P.ProtocolError as exc:
        # `param` as the client spelled it (the fields were read in camelCase)
        raise ApiError.of(exc, next((k for k in body if SNAKE_TO_CAMEL.get(k, k) == exc.field), exc.field)) from None
    backend = server.backend
    if instruct is not None and backend is not None and not backend.supports_instruct:
        instruct = None  # OpenAI: "does not work with tts-1"; a Base model speaks the voice it clones
    return SpeechRequest(Utterance(text, _voice(server, body.get("voice")), language, sampling, instruct,
                                   x_vector_only=x_vector_only), fmt, stream_format)


def _voice(server: ServerView, voice) -> str | None:
    """A voice id (or `{"id": ...}`) as the server knows it; OpenAI's names mean the default."""
    if isinstance(voice, dict):
        voice = voice.get("id")
    if voice is None or voice == "":
        return None
    if not isinstance(voice, str):
        raise ApiError("BAD_REQUEST", "voice must be a string or {\"id\": string}", "voice")
    try:
        return server.check_voice(voice)
    except P.ProtocolError:
        if voice.lower() in OPENAI_VOICES:
            return None
        raise ApiError("VOICE_NOT_FOUND", f"unknown voice {voice[:80]!r}; GET /v1/audio/voices lists them",
                       "voice") from None


class OpenAIApi:
    def __init__(self, server: ServerView, public_listings: bool = False):
        self.server = server
        self.public_listings = public_listings  # Open WebUI lists voices and models without a token
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.server.cfg.max_voice_message_bytes)
        app.add_routes([
            web.post("/v1/audio/speech", self.speech),
            web.get("/v1/audio/voices", self.voices),
            web.post("/v1/audio/voices", self.upload_voice),
            web.get("/v1/audio/models", self.audio_models),
            web.get("/v1/models", self.models),
            web.get(P.HEALTH_PATH, self.health),
            web.get(P.METRICS_PATH, self.metrics),
        ])
        return app

    async def start(self, host: str, port: int) -> None:
        # handler_cancellation: a client that goes away cancels its handler, and with it the request.
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, shutdown_timeout=self.server.cfg.shutdown_grace_s)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info(json.dumps({"event": "http_listening", "host": host, "port": self.port,
                             "url": f"http://{host}:{self.port}/v1"}))

    async def stop(self) -> None:
        """Stop listening; streams still running get the shutdown grace period to finish."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- helpers -----------------------------------------------------------------------------
    def _authorize(self, request: web.Request, listing: bool = False) -> None:
        if listing and self.public_listings:
            return
        value = request.headers.get("Authorization", "")
        token = value[7:].strip() if value.lower().startswith("bearer ") else None
        if not self.server.check_token(token):
            raise ApiError("UNAUTHORIZED", "missing or wrong API key: send Authorization: Bearer <token>")

    def _error(self, exc: ApiError, request_id: str) -> web.Response:
        self.server.metrics.error("http", exc.code)
        log.info(json.dumps({"event": "http_error", "requestId": request_id, "status": exc.status,
                             "code": exc.code, "message": exc.message[:200]}))
        return exc.response(request_id)

    async def _guarded(self, request: web.Request, handler, listing: bool = False) -> web.StreamResponse:
        request_id = request.headers.get("x-request-id") or f"req_{secrets.token_hex(8)}"
        try:
            self._authorize(request, listing)
            return await handler(request, request_id)
        except ApiError as exc:
            return self._error(exc, request_id)
        except P.ProtocolError as exc:
            return self._error(ApiError.of(exc), request_id)

    # -- routes ------------------------------------------------------------------------------
    async def speech(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._speech)

    async def _speech(self, request: web.Request, request_id: str) -> web.StreamResponse:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise ApiError("BAD_REQUEST", "the body is not valid JSON") from None
        sr = parse_speech(self.server, body)
        try:
            enc = encoder(sr.response_format, OUTPUT_RATE)
        except UnsupportedFormat as exc:
            raise ApiError("BAD_REQUEST", str(exc), "response_format") from None
        t0 = time.monotonic()
        response: web.StreamResponse | None = None
        try:
            async with speech(self.server, sr.utterance, "http", label=f"http/{request_id}",
                              request_id=request_id) as (chunks, spoken):
                resample = StreamResampler(spoken.sample_rate, OUTPUT_RATE)
                async for pcm in chunks:
                    if response is None:  # errors before the first audio are still plain HTTP errors
                        response = await self._begin(request, request_id, sr)
                    await self._send(response, sr, enc.encode(resample.process(pcm)))
                if response is None:
                    response = await self._begin(request, request_id, sr)
                await self._send(response, sr, enc.encode(resample.flush()) + enc.finish())
                if sr.stream_format == "sse":
                    await response.write(_sse({"type": "speech.audio.done", "usage": {
                        "input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}))
                await response.write_eof()
        except P.ProtocolError as exc:
            if response is None:
                raise
            self.server.metrics.error("http", exc.code)
            log.info(json.dumps({"event": "http_stream_error", "requestId": request_id, "code": exc.code}))
            if sr.stream_format == "sse":  # the client learns why; then the stream ends
                await response.write(_sse({"type": "speech.audio.error", "error": ApiError.of(exc).body()["error"]}))
                await response.write_eof()
            else:  # no way to say it inside an audio body: end it unfinished, so the client sees a failure
                request.transport.close()
            return response
        log.info(json.dumps({"event": "http_speech", "requestId": request_id, "chars": len(sr.utterance.text),
                             "format": sr.response_format, "stream": sr.stream_format, "voice": sr.utterance.voice,
                             "samples": spoken.samples, "ms": round(1000 * (time.monotonic() - t0), 1),
                             "firstAudioMs": None if spoken.first_audio_s is None
                             else round(1000 * spoken.first_audio_s, 1)}))
        return response

    async def _begin(self, request: web.Request, request_id: str, sr: SpeechRequest) -> web.StreamResponse:
        sse = sr.stream_format == "sse"
        headers = {"Content-Type": "text/event-stream" if sse else CONTENT_TYPES[sr.response_format],
                   "x-request-id": request_id, "Cache-Control": "no-cache",
                   "X-Accel-Buffering": "no"}  # nginx: pass each chunk on as it comes
        if sr.response_format in ("pcm", "wav"):
            headers.update({"X-Sample-Rate": str(OUTPUT_RATE), "X-Channels": "1", "X-Bit-Depth": "16"})
        response = web.StreamResponse(status=200, headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, sr: SpeechRequest, data: bytes) -> None:
        if not data:
            return
        if sr.stream_format == "sse":
            data = _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
        await response.write(data)

    async def voices(self, request: web.Request) -> web.StreamResponse:
        async def handler(request, request_id):
            return web.json_response({"voices": self.server.voice_list()})
        return await self._guarded(request, handler, listing=True)

    async def audio_models(self, request: web.Request) -> web.StreamResponse:
        async def handler(request, request_id):
            return web.json_response({"models": [{"id": MODEL_ID}]})
        return await self._guarded(request, handler, listing=True)

    async def models(self, request: web.Request) -> web.StreamResponse:
        async def handler(request, request_id):
            created = int(getattr(self.server, "started_at", time.time()))
            return web.json_response({"object": "list", "data": [
                {"id": MODEL_ID, "object": "model", "created": created, "owned_by": "qwen3tts-jax"}]})
        return await self._guarded(request, handler, listing=True)

    async def upload_voice(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._upload_voice)

    async def _upload_voice(self, request: web.Request, request_id: str) -> web.StreamResponse:
        """Multipart: `audio_sample` (OpenAI's name; `audio` or `file` also work), `name`, optional
        `voice_id`, `transcript` (or `ref_text`: in-context cloning), `language`, `description`;
        OpenAI's `consent` is accepted and not checked."""
        if not request.content_type.startswith("multipart/"):
            raise ApiError("BAD_REQUEST", "send multipart/form-data with the audio in 'audio_sample'")
        fields, audio = {}, None
        async for part in await request.multipart():
            if part.name in ("audio_sample", "audio", "file"):
                audio = await part.read()
            elif part.name:
                fields[part.name] = await part.text()
        if not audio:
            raise ApiError("BAD_REQUEST", "no audio: send the reference as the 'audio_sample' file", "audio_sample")
        name = fields.get("name") or None
        voice_id = fields.get("voice_id") or _voice_id_from(name)
        down = self.server.unavailable()
        if down is not None:
            raise P.ProtocolError(*down)
        msg = P.RegisterVoice(voice_id=voice_id, audio=audio,
                              transcript=fields.get("transcript") or fields.get("ref_text") or None,
                              language=fields.get("language") or None, name=name,
                              description=fields.get("description") or None,
                              overwrite=fields.get("overwrite", "").lower() in ("1", "true", "yes"))
        voice = await self.server.register_voice(msg)
        return web.json_response({"id": voice.id, "created_at": int(time.time()), "name": voice.public()["name"],
                                  "object": "audio.voice", "type": "audio_sample"},
                                 headers={"x-request-id": request_id})

    async def health(self, request: web.Request) -> web.Response:
        health = self.server.health()
        return web.json_response(health, status=200 if health["status"] == "ok" else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.server.metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def _voice_id_from(name: str | None) -> str:
    """A voice id from an upload's display name ("My Voice" -> "my-voice"), else a fresh one."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", (name or "").lower()).strip("-_")[:64]
    return slug if slug and P.VOICE_ID_RE.fullmatch(slug) else f"voice_{secrets.token_hex(6)}"
