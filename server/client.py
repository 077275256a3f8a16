r"""`python -m qwen3tts_jax.server.client`: speak one text through a running server and write the WAV.

    python -m qwen3tts_jax.server.client --text "Hello there." --out out.wav
    python -m qwen3tts_jax.server.client --text "Bonjour." --language French --voice alice --sample-rate 48000
    python -m qwen3tts_jax.server.client --text "Hi." --speaker ryan --instruct "Cheerfully."   (CustomVoice)
    python -m qwen3tts_jax.server.client --text "Hi." --instruct "A calm, low voice."   (VoiceDesign)
    python -m qwen3tts_jax.server.client --text "Hello there, how are you?" --text-stream --tokens-per-second 20

Streams binary PCM, reports first-audio latency (T1 - T0: `speak` sent to first audio
frame received), the longest gap between audio frames, under-runs, and how many
seconds of audio arrived per wall-clock second (xRealTime).

--text-stream sends the text as an LLM would write it: cut into token-like pieces (a run of
spaces and up to 4 non-space characters each, `\s*\S{1,4}`: "Hello there." -> "Hell", "o",
" ther", "e."), the first in a `speak` with "textStream": true, the rest as `appendText`
at --tokens-per-second (or --burst N of them at once every N/R seconds), then `endText`.
First audio is then measured from the first piece sent; the report adds the server's
textWaitMs (how long the row waited for text) and when the last piece went out (textMs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
import wave
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import connect

from . import protocol as P

DEFAULT_URL = f"ws://127.0.0.1:8765{P.SPEAK_PATH}"


class ServerError(RuntimeError):
    def __init__(self, msg: dict):
        super().__init__(f"{msg.get('code')}: {msg.get('message')}")
        self.msg = msg


@dataclass
class Result:
    pcm: bytes
    sample_rate: int
    encoding: str
    complete: dict
    t_first_audio: float | None  # seconds after `speak` was sent
    t_complete: float
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (seconds after T0, samples)
    t_text_end: float | None = None  # streamed text: when `endText` went out (None: not sent)

    @property
    def samples(self) -> np.ndarray:
        return P.decode_pcm(self.pcm, self.encoding)

    @property
    def audio_seconds(self) -> float:
        return len(self.pcm) / P.bytes_per_sample(self.encoding) / self.sample_rate

    def gaps(self) -> list[float]:
        t = [a for a, _ in self.arrivals]
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    def underruns(self) -> tuple[int, float]:
        """Playback that starts at the first frame and plays in real time: how many times, and
        for how long in total, it would have run dry waiting for the next frame."""
        if not self.arrivals:
            return 0, 0.0
        start = self.arrivals[0][0]
        played_until = start  # wall time at which the buffered audio runs out
        count, stall = 0, 0.0
        for t, n in self.arrivals:
            if t > played_until + 1e-4:
                if t != start:
                    count += 1
                    stall += t - played_until
                played_until = t
            played_until += n / self.sample_rate
        return count, stall


async def speak(ws, text: str, **fields) -> Result:
    """Send one `speak` on an open, started session and collect its audio until `complete`."""
    encoding = fields.pop("_encoding", "pcm16")
    rate = fields.pop("_sample_rate", P.ENGINE_SAMPLE_RATE)
    t0 = time.perf_counter()
    await ws.send(json.dumps({"type": "speak", "text": text, **fields}))
    return await _collect(ws, t0, encoding, rate)


async def _collect(ws, t0: float, encoding: str, rate: int) -> Result:
    """Audio frames until `complete` (times in seconds after `t0`); an `error` raises ServerError."""
    chunks: list[bytes] = []
    arrivals: list[tuple[float, int]] = []
    bps = P.bytes_per_sample(encoding)
    first = None
    while True:
        raw = await ws.recv()
        now = time.perf_counter() - t0
        if isinstance(raw, bytes):
            if first is None:
                first = now
            chunks.append(raw)
            arrivals.append((now, len(raw) // bps))
            continue
        msg = json.loads(raw)
        if msg["type"] == "complete":
            return Result(b"".join(chunks), rate, encoding, msg, first, now, arrivals)
        if msg["type"] == "error":
            raise ServerError(msg)


_PIECE_RE = re.compile(r"\s*\S{1,4}|\s+")


def text_pieces(text: str) -> list[str]:
    """`text` cut like an LLM's output tokens: spaces and up to 4 non-space characters a piece
    (trailing spaces are a piece of their own). The pieces join back to `text`."""
    return _PIECE_RE.findall(text) or [""]


async def speak_streamed(ws, pieces: list[str], tokens_per_second: float, burst: int = 1, **fields) -> Result:
    """One streamed request on an open, started session: `pieces[0]` in a `speak` with
    "textStream": true, the rest as `appendText`, `burst` at a time every `burst /
    tokens_per_second` seconds (on a fixed schedule from the first), then `endText`; its audio
    until `complete`. Times in the Result are from the first piece sent. If the request ends
    before all its text went out (a frame cap, an error), the rest is not sent and
    `t_text_end` stays None."""
    encoding = fields.pop("_encoding", "pcm16")
    rate = fields.pop("_sample_rate", P.ENGINE_SAMPLE_RATE)
    burst = max(1, burst)
    period = burst / tokens_per_second
    t0 = time.perf_counter()
    ended: list[float] = []

    async def feed() -> None:
        for i in range(1, len(pieces)):
            due = t0 + (i // burst) * period
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(json.dumps({"type": "appendText", "text": pieces[i]}))
        await ws.send(json.dumps({"type": "endText"}))
        ended.append(time.perf_counter() - t0)

    await ws.send(json.dumps({"type": "speak", "textStream": True, "text": pieces[0], **fields}))
    sender = asyncio.create_task(feed())
    try:
        res = await _collect(ws, t0, encoding, rate)
    finally:
        if not sender.done():
            sender.cancel()
        try:
            await sender
        except asyncio.CancelledError:
            pass
    res.t_text_end = ended[0] if ended else None
    return res


async def open_session(url: str, *, voice: str | None = None, language: str | None = None,
                       sample_rate: int = 24000, encoding: str = "pcm16", token: str | None = None,
                       open_timeout: float = 30, instruct: str | None = None):
    """Connect, read `ready`, send `start`; returns (websocket, ready, started)."""
    ws = await connect(url, compression=None, max_size=None, open_timeout=open_timeout)
    ready = json.loads(await ws.recv())
    if ready.get("type") == "error":
        await ws.close()
        raise ServerError(ready)
    start = {"type": "start", "sampleRate": sample_rate, "encoding": encoding}
    if voice:
        start["voice"] = voice
    if language:
        start["language"] = language
    if instruct is not None:
        start["instruct"] = instruct
    if token:
        start["authToken"] = token
    await ws.send(json.dumps(start))
    started = json.loads(await ws.recv())
    if started.get("type") != "started":
        await ws.close()
        raise ServerError(started)
    return ws, ready, started


def write_wav(path: str, samples: np.ndarray, sample_rate: int) -> None:
    pcm = P.encode_pcm(samples, "pcm16")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)


async def amain(a: argparse.Namespace) -> int:
    token = os.environ.get(a.token_env) if a.token_env else None
    t_connect = time.perf_counter()
    ws, ready, started = await open_session(a.url, voice=a.speaker or a.voice, language=a.language,
                                            sample_rate=a.sample_rate, encoding=a.encoding, token=token,
                                            instruct=a.instruct)
    connect_ms = (time.perf_counter() - t_connect) * 1000
    if ready.get("warning"):
        print(f"warning: {ready['warning']}", file=sys.stderr)
    fields = {"_encoding": a.encoding, "_sample_rate": a.sample_rate}
    if a.seed is not None:
        fields["seed"] = a.seed
    if a.max_frames is not None:
        fields["maxFrames"] = a.max_frames
    try:
        if a.text_stream:
            pieces = text_pieces(a.text)
            res = await speak_streamed(ws, pieces, a.tokens_per_second, a.burst, **fields)
        else:
            res = await speak(ws, a.text, **fields)
        await ws.send(json.dumps({"type": "stop", "reason": "client done"}))
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await ws.close()
    write_wav(a.out, res.samples, a.sample_rate)
    gaps = res.gaps()
    under, stall = res.underruns()
    wall = res.t_complete
    report = {"out": a.out, "voice": started["voice"], "language": started["language"],
              "sampleRate": a.sample_rate, "connectMs": round(connect_ms, 1),
              "firstAudioMs": round(1000 * res.t_first_audio, 1) if res.t_first_audio is not None else None,
              "totalMs": round(1000 * wall, 1), "audioSeconds": round(res.audio_seconds, 3),
              "xRealTime": round(res.audio_seconds / wall, 3) if wall else None,
              "frames": len(res.arrivals),
              "maxGapMs": round(1000 * max(gaps), 1) if gaps else None,
              "underruns": under, "stallMs": round(1000 * stall, 1)}
    if a.text_stream:
        report.update({"pieces": len(pieces), "tokensPerSecond": a.tokens_per_second, "burst": a.burst,
                       "textMs": round(1000 * res.t_text_end, 1) if res.t_text_end is not None else None,
                       "textWaitMs": res.complete.get("textWaitMs")})
    print(json.dumps(report) if a.json else "\n".join(f"{k:>14}: {v}" for k, v in report.items()))
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m qwen3tts_jax.server.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True)
    p.add_argument("--voice", default=None, help="voice id (default: the server's default voice)")
    p.add_argument("--speaker", default=None,
                   help="CustomVoice servers: the preset speaker (the same as --voice NAME)")
    p.add_argument("--instruct", default=None,
                   help="CustomVoice 1.7B: how to speak; VoiceDesign: the voice, described in words")
    p.add_argument("--language", default=None, help='e.g. English, French, "auto" (default English)')
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--out", default="out.wav")
    p.add_argument("--sample-rate", type=int, default=24000, choices=P.SAMPLE_RATES)
    p.add_argument("--encoding", default="pcm16", choices=P.ENCODINGS)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-frames", type=int, default=None, help="cap on 12.5 Hz codec frames")
    p.add_argument("--token-env", default=None, metavar="NAME",
                   help="environment variable holding the auth token")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.add_argument("--text-stream", action="store_true",
                   help="send the text as a streamed request (speak textStream, appendText, endText), in "
                        "LLM-token-like pieces of up to 4 non-space characters; first audio counts from the first")
    p.add_argument("--tokens-per-second", type=float, default=20.0, metavar="R",
                   help="with --text-stream: pieces sent per second (default 20)")
    p.add_argument("--burst", type=int, default=1, metavar="N",
                   help="with --text-stream: send N pieces at once every N/R seconds (default 1)")
    a = p.parse_args(argv)
    if a.tokens_per_second <= 0 or a.burst < 1:
        p.error("--tokens-per-second must be > 0 and --burst >= 1")
    try:
        sys.exit(asyncio.run(amain(a)))
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (OSError, TimeoutError) as exc:
        print(f"error: cannot reach {a.url}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
