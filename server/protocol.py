"""The /api/v1/speak wire protocol: message parsing, validation, error codes, audio encoding.

Everything here is pure (no I/O, no engine), so it is tested on its own and reused by the
client and the load test. Field names are camelCase on the wire; docs/PROTOCOL.md is the
description for client authors.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPEAK_PATH = "/api/v1/speak"
VOICES_PATH = "/api/v1/voices"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"

ENGINE_SAMPLE_RATE = 24000
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
ENCODINGS = ("pcm16", "pcm32f")
TRANSPORTS = ("binary", "json")
PRIORITIES = ("normal", "high")

# A voice id is a name, never a path: no dots, no slashes, no leading dash or underscore.
VOICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

# code -> recoverable. "Recoverable" means that the same request may succeed if retried later
# (after the model loads, after load drops); it does not say whether the connection stays open.
# The server closes the connection only for UNAUTHORIZED, for RATE_LIMITED on connect (too many
# sessions), after `stop`, for a client that does not read its audio, and on shutdown.
ERROR_CODES: dict[str, bool] = {
    "MODEL_LOADING": True,
    "SYNTHESIS_ERROR": True,
    "INVALID_TEXT": False,
    "VOICE_NOT_FOUND": False,
    "UNAUTHORIZED": False,
    "RATE_LIMITED": True,
    "TIMEOUT": True,
    "CANCELLED": True,
    "BAD_REQUEST": True,
}


class ProtocolError(Exception):
    """A request the server answers with an `error` message."""

    def __init__(self, code: str, message: str, request_id: str | None = None, field: str | None = None):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.field = field  # the message field at fault, where one is (HTTP's error `param`)
        self.message_type: str | None = None  # the client message's `type`, once known


# ---------------------------------------------------------------------------------------------
# Client -> server


@dataclass(frozen=True)
class Sampling:
    """Per-request sampling overrides (protocol extension); None means the engine default."""

    seed: int | None = None
    greedy: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    max_frames: int | None = None

    def merged(self, over: Sampling) -> Sampling:
        vals = {k: getattr(over, k) if getattr(over, k) is not None else getattr(self, k)
                for k in self.__dataclass_fields__}
        return Sampling(**vals)


@dataclass(frozen=True)
class Start:
    sample_rate: int | None = None
    encoding: str | None = None
    voice: str | None = None
    language: str | None = None
    auth_token: str | None = None
    contract_id: str | None = None
    transport: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    instruct: str | None = None  # CustomVoice 1.7B / VoiceDesign: how to speak, or the voice described
    x_vector_only: bool | None = None  # speak Base voices by their x-vector alone (no reference frames)


@dataclass(frozen=True)
class Speak:
    text: str
    priority: str = "normal"
    request_id: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    instruct: str | None = None  # this request only; None keeps the session's
    text_stream: bool = False  # `text` is only the start: appendText ... endText bring the rest
    x_vector_only: bool | None = None  # this request only; None keeps the session's


@dataclass(frozen=True)
class AppendText:
    text: str


@dataclass(frozen=True)
class EndText:
    pass


@dataclass(frozen=True)
class Cancel:
    pass


@dataclass(frozen=True)
class Stop:
    reason: str | None = None


@dataclass(frozen=True)
class RegisterVoice:
    voice_id: str
    audio: bytes
    transcript: str | None
    language: str | None
    name: str | None
    description: str | None
    overwrite: bool


ClientMessage = Start | Speak | AppendText | EndText | Cancel | Stop | RegisterVoice

_SAMPLING_FIELDS = {  # wire name -> (attr, type, check)
    "seed": ("seed", int, lambda v: 0 <= v < 2**32),
    "greedy": ("greedy", bool, lambda v: True),
    "temperature": ("temperature", float, lambda v: 0.0 < v <= 10.0),
    "topK": ("top_k", int, lambda v: 0 <= v <= 100000),
    "topP": ("top_p", float, lambda v: 0.0 < v <= 1.0),
    "repetitionPenalty": ("repetition_penalty", float, lambda v: 0.0 < v <= 10.0),
    "maxFrames": ("max_frames", int, lambda v: 1 <= v <= 100000),
}


def get_field(msg: dict, key: str, typ: type | tuple, required: bool = False) -> Any:
    if key not in msg or msg[key] is None:
        if required:
            raise ProtocolError("BAD_REQUEST", f"missing field {key!r}", field=key)
        return None
    value = msg[key]
    # bool is an int subclass in Python; JSON true must not pass for a number, nor 1 for a bool.
    types = typ if isinstance(typ, tuple) else (typ,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        names = "/".join(t.__name__ for t in types)
        raise ProtocolError("BAD_REQUEST", f"field {key!r} must be {names}", field=key)
    if isinstance(value, str) and not _is_unicode(value):  # text for the tokenizer, names for the disk
        raise ProtocolError("INVALID_TEXT" if key in TEXT_FIELDS else "BAD_REQUEST",
                            f"field {key!r} is not valid Unicode (it holds a lone surrogate)", field=key)
    return value


# Fields whose content the tokenizer reads: bad content there is INVALID_TEXT.
TEXT_FIELDS = ("text", "transcript", "instruct", "input", "instructions")  # HTTP: input, instructions


def _choice(msg: dict, key: str, choices: tuple) -> Any:
    value = msg.get(key)
    if value is None:
        return None
    if value not in choices:
        raise ProtocolError("BAD_REQUEST", f"field {key!r} must be one of {list(choices)}", field=key)
    return value


def parse_sampling(msg: dict) -> Sampling:
    vals = {}
    for wire, (attr, typ, check) in _SAMPLING_FIELDS.items():
        v = get_field(msg, wire, typ)
        if v is None:
            continue
        if not check(v):
            raise ProtocolError("BAD_REQUEST", f"field {wire!r} out of range", field=wire)
        vals[attr] = float(v) if typ is float else v
    return Sampling(**vals)


def _is_unicode(text: str) -> bool:
    """Whether UTF-8 can encode `text` (JSON's "\\ud800" escapes decode to lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_client_message(raw: str | bytes, max_bytes: int, max_voice_bytes: int) -> ClientMessage:
    """Parse one WebSocket frame from a client; raises ProtocolError (BAD_REQUEST) on any fault.

    `max_bytes` bounds every message but `registerVoice`, which may be up to `max_voice_bytes`.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        raise ProtocolError("BAD_REQUEST", "binary frames are not accepted; send JSON text frames")
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > max_voice_bytes:
        raise ProtocolError("BAD_REQUEST", f"message too large ({size} bytes)")
    try:
        msg = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("BAD_REQUEST", f"malformed JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("BAD_REQUEST", "a message must be a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("BAD_REQUEST", "missing field 'type'")
    if kind != "registerVoice" and size > max_bytes:
        raise ProtocolError("BAD_REQUEST", f"message too large ({size} > {max_bytes} bytes)")
    if kind == "speak":
        rid = get_field(msg, "requestId", str)
        try:
            text = get_field(msg, "text", str, required=True)
            priority = _choice(msg, "priority", PRIORITIES) or "normal"
            sampling = parse_sampling(msg)
            instruct = get_field(msg, "instruct", str)
            text_stream = bool(get_field(msg, "textStream", bool))
            x_vector_only = get_field(msg, "xVectorOnly", bool)
        except ProtocolError as exc:
            exc.request_id = rid
            raise
        return Speak(text=text, priority=priority, request_id=rid, sampling=sampling, instruct=instruct,
                     text_stream=text_stream, x_vector_only=x_vector_only)
    if kind == "appendText":
        try:
            return AppendText(text=get_field(msg, "text", str, required=True))
        except ProtocolError as exc:
            exc.message_type = kind  # the session names the streamed request it was meant for
            raise
    if kind == "endText":
        return EndText()
    if kind == "start":
        rate = get_field(msg, "sampleRate", int)
        if rate is not None and rate not in SAMPLE_RATES:
            raise ProtocolError("BAD_REQUEST", f"sampleRate must be one of {list(SAMPLE_RATES)}")
        return Start(
            sample_rate=rate,
            encoding=_choice(msg, "encoding", ENCODINGS),
            voice=get_field(msg, "voice", str),
            language=get_field(msg, "language", str),
            auth_token=get_field(msg, "authToken", str),
            contract_id=get_field(msg, "contractId", (str, int)),
            transport=_choice(msg, "transport", TRANSPORTS),
            sampling=parse_sampling(msg),
            instruct=get_field(msg, "instruct", str),
            x_vector_only=get_field(msg, "xVectorOnly", bool),
        )
    if kind == "cancel":
        return Cancel()
    if kind == "stop":
        return Stop(reason=get_field(msg, "reason", str))
    if kind == "registerVoice":
        voice_id = get_field(msg, "voiceId", str, required=True)
        b64 = get_field(msg, "audio", str, required=True)
        try:
            audio = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("BAD_REQUEST", "field 'audio' is not valid base64") from None
        if not audio:
            raise ProtocolError("BAD_REQUEST", "field 'audio' is empty")
        return RegisterVoice(
            voice_id=voice_id,
            audio=audio,
            transcript=get_field(msg, "transcript", str),
            language=get_field(msg, "language", str),
            name=get_field(msg, "name", str),
            description=get_field(msg, "description", str),
            overwrite=bool(get_field(msg, "overwrite", bool)),
        )
    raise ProtocolError("BAD_REQUEST", f"unknown message type {kind!r}")


# ---------------------------------------------------------------------------------------------
# Server -> client


def dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def error_message(code: str, message: str, request_id: str | None = None) -> dict:
    out = {"type": "error", "code": code, "message": message, "recoverable": ERROR_CODES[code]}
    if request_id is not None:
        out["requestId"] = request_id
    return out


def encode_pcm(samples: np.ndarray, encoding: str) -> bytes:
    """Float32 mono samples in [-1, 1] -> little-endian PCM bytes."""
    if encoding == "pcm32f":
        return np.asarray(samples, dtype="<f4").tobytes()
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return np.round(clipped * 32767.0).astype("<i2").tobytes()


def decode_pcm(data: bytes, encoding: str) -> np.ndarray:
    """Inverse of encode_pcm (to float32), for clients and tests."""
    if encoding == "pcm32f":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


def bytes_per_sample(encoding: str) -> int:
    return 4 if encoding == "pcm32f" else 2
