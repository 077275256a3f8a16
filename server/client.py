"""`python -m qwen3tts_jax.server.client`: speak one text through a running server and write the WAV.

    python -m qwen3tts_jax.server.client --text "Hello there." --out out.wav
    python -m qwen3tts_jax.server.client --text "Bonjour." --language French --voice alice --sample-rate 48000
    python -m qwen3tts_jax.server.client --text "Hi." --speaker ryan --instruct "Cheerfully."   (CustomVoice)
    python -m qwen3tts_jax.server.client --text "Hi." --instruct "A calm, low voice."   (VoiceDesign)

Streams binary PCM, reports first-audio latency (T1 - T0: `speak` sent to first audio
frame received), the longest gap between audio frames, under-runs, and how many
seconds of audio arrived per wall-clock second (xRealTime).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    chunks: list[bytes] = []
    arrivals: list[tuple[float, int]] = []
    bps = P.bytes_per_sample(encoding)
    t0 = time.perf_counter()
    await ws.send(json.dumps({"type": "speak", "text": text, **fields}))
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
    a = p.parse_args(argv)
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
