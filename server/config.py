"""The server's settings (every limit in one place)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qwen3tts_jax import paths


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    voices_dir: Path = field(default_factory=paths.voices_dir)  # under the one cache root
    auth_token: str | None = None
    max_sessions: int = 64
    batch_slots: int = 8
    max_message_bytes: int = 64 * 1024  # every control message
    max_voice_message_bytes: int = 16 * 1024 * 1024  # registerVoice (base64 audio)
    max_text_chars: int = 2000
    max_streamed_text_chars: int = 20000  # all the text of one streamed (textStream) request
    text_idle_timeout_s: float = 15.0  # an open streamed request with no appendText for this long: TIMEOUT
    max_queued_per_session: int = 8
    request_timeout_s: float = 120.0
    max_send_buffer_bytes: int = 4 * 1024 * 1024
    prompt_cache_size: int = 32
    max_audio_seconds: float = 120.0  # hard cap on one request's audio
    auth_timeout_s: float = 10.0
    shutdown_grace_s: float = 10.0
    default_seed: int = 0
    warmup: bool = True
    http_port: int | None = None  # the OpenAI-compatible HTTP API (None: off; 0: a free port); CLI default 8000
    public_listings: bool = False  # GET /v1/audio/voices and /v1/models without the token (Open WebUI)
    wyoming_port: int | None = None  # Home Assistant's Wyoming TTS (None: off)
    devices: int | None = None  # one engine on each of the first N of jax.devices(); None: JAX's default device


DEFAULT_HTTP_PORT = 8000  # vLLM's, Speaches', faster-qwen3-tts's
