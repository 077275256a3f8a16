"""Helpers for the server tests: a real server on a random loopback port, a real client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from pathlib import Path

import numpy as np
from qwen3tts_jax.server import protocol as P
from qwen3tts_jax.server.app import TTSServer
from qwen3tts_jax.server.backend import Backend
from qwen3tts_jax.server.config import ServerConfig
from websockets.asyncio.client import connect

from tests.fake_engine import FRAME, LANGUAGES, SAMPLE_RATE, FakeTTS, FakeVoicePrompt

TIMEOUT = 20.0


def arun(coro, timeout: float = 60.0):
    """Run one async test body with an overall deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def fake_loader(fake: FakeTTS, slots: int):
    def load() -> Backend:
        return Backend(tts=fake, engine=fake.batch_engine(slots), prompt_cls=FakeVoicePrompt, model_key="fake",
                       languages=list(LANGUAGES), sample_rate=SAMPLE_RATE, frame_rate=SAMPLE_RATE / FRAME)
    return load


@contextlib.asynccontextmanager
async def running_server(tmp_path: Path, fake: FakeTTS | None = None, loader=None, **overrides):
    fake = fake or FakeTTS(step_delay=0.002)
    slots = overrides.pop("batch_slots", 4)
    overrides.setdefault("http_port", 0)  # the OpenAI-compatible API on a free port too
    cfg = ServerConfig(host="127.0.0.1", port=0, voices_dir=Path(tmp_path) / "voices",
                       batch_slots=slots, **overrides)
    srv = TTSServer(cfg, loader or fake_loader(fake, slots), model_name="fake")
    srv.fake = fake
    await srv.start()
    assert await srv.worker.loaded
    try:
        yield srv
    finally:
        await srv.shutdown()


def url(srv: TTSServer) -> str:
    return f"ws://127.0.0.1:{srv.port}{P.SPEAK_PATH}"


def http_url(srv: TTSServer) -> str:
    """The OpenAI-compatible API's base URL (what clients take as `base_url`)."""
    return f"http://127.0.0.1:{srv.http.port}/v1"


class Client:
    """A thin protocol client over a real websockets connection."""

    def __init__(self, ws):
        self.ws = ws
        self.ready: dict | None = None
        self.chunks: list[dict] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, srv_or_url, **kw):
        target = srv_or_url if isinstance(srv_or_url, str) else url(srv_or_url)
        async with connect(target, compression=None, max_size=None, **kw) as ws:
            c = cls(ws)
            c.ready = await c.recv_json()
            yield c

    async def send(self, **msg):
        await self.ws.send(json.dumps(msg))

    async def recv(self, timeout: float = TIMEOUT):
        return await asyncio.wait_for(self.ws.recv(), timeout)

    async def recv_json(self, timeout: float = TIMEOUT) -> dict:
        raw = await self.recv(timeout)
        assert isinstance(raw, str), f"expected a JSON text frame, got {len(raw)} binary bytes"
        return json.loads(raw)

    async def start(self, **fields) -> dict:
        await self.send(type="start", **fields)
        msg = await self.recv_json()
        assert msg["type"] == "started", msg
        return msg

    async def collect(self, timeout: float = TIMEOUT) -> tuple[bytes, dict, list[bytes]]:
        """Receive until `complete` or `error`: (all PCM bytes, final message, binary frames)."""
        frames: list[bytes] = []
        while True:
            raw = await self.recv(timeout)
            if isinstance(raw, bytes):
                frames.append(raw)
                continue
            msg = json.loads(raw)
            if msg["type"] == "audioChunk":
                frames.append(base64.b64decode(msg["data"]))
                self.chunks.append(msg)
                continue
            assert msg["type"] in ("complete", "error"), msg
            return b"".join(frames), msg, frames

    async def speak(self, text: str, **fields) -> tuple[bytes, dict]:
        await self.send(type="speak", text=text, **fields)
        pcm, msg, _ = await self.collect()
        return pcm, msg


def prompt_of(srv: TTSServer, voice_id: str = "default") -> FakeVoicePrompt:
    voice = srv.voices.get(voice_id)
    return FakeVoicePrompt.from_key(srv.fake, voice.reference, voice.transcript)


def expected_pcm(srv: TTSServer, text: str, voice_id: str = "default", encoding: str = "pcm32f",
                 **kw) -> bytes:
    """What the server sends for `text`: the fake's audio under the server's frame budget
    (unless `max_new_frames` is given)."""
    if "max_new_frames" not in kw:
        kw["max_new_frames"] = srv.backend.make_request(
            text, None, "auto", seed=0, max_new_frames=None, max_audio_seconds=srv.cfg.max_audio_seconds).max_new_frames
    wav, _ = srv.fake.synthesize(text, voice=prompt_of(srv, voice_id), **kw)
    return P.encode_pcm(np.asarray(wav), encoding)
