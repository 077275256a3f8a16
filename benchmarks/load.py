"""Load test for the /api/v1/speak server: N concurrent clients over loopback.

    # against a running server
    python benchmarks/load.py --url ws://127.0.0.1:8765/api/v1/speak --clients 16 --requests 2
    # or let it start one (demo checkpoint unless --model is given) and stop it afterwards
    python benchmarks/load.py --spawn [--model DIR] [--dtype bfloat16] --batch-slots 16 --clients 16
    # full-size timing without downloading weights (random weights, released sizes)
    python benchmarks/load.py --spawn --random-full-size --dtype bfloat16 --max-frames 100

Reports, per PROTOCOL.md: first-audio latency T1 - T0 (p50/p95/p99), inter-chunk gaps
(p50/p95/p99/max), under-runs (a real-time player that starts at the first frame runs dry),
and audio seconds delivered per wall second. Results go to benchmarks/results/ as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qwen3tts_jax.server.client import ServerError, open_session, speak  # noqa: E402

from qwen3tts_jax import paths  # noqa: E402

TEXTS = [
    "Hello! How can I help you today?",
    "The meeting has been moved to three o'clock on Thursday, in the small conference room.",
    "Sure, I can help with that. Your order shipped yesterday and should arrive by Friday.",
    "Thanks for calling. Please hold for a moment while I look up your account.",
    "It looks like it will rain this afternoon, so you might want to bring an umbrella.",
    "Turn left at the next intersection, then continue straight for about two kilometres.",
    "Your appointment is confirmed. We will send a reminder the day before.",
    "I'm sorry, I didn't quite catch that. Could you say it again?",
]


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99),
            "max": round(max(values), 2) if values else None,
            "mean": round(float(np.mean(values)), 2) if values else None}


async def client(i: int, a: argparse.Namespace, t_start: float) -> list[dict]:
    await asyncio.sleep(random.Random(i).uniform(0, a.stagger))
    token = os.environ.get(a.token_env) if a.token_env else None
    ws, _, _ = await open_session(a.url, sample_rate=a.sample_rate, encoding=a.encoding, token=token,
                                  open_timeout=60)
    out = []
    try:
        for r in range(a.requests):
            text = TEXTS[(i + r) % len(TEXTS)]
            fields = {"_encoding": a.encoding, "_sample_rate": a.sample_rate, "seed": i * 1000 + r}
            if a.max_frames:
                fields["maxFrames"] = a.max_frames
            t_send = time.perf_counter() - t_start
            try:
                res = await speak(ws, text, **fields)
            except ServerError as exc:
                out.append({"client": i, "request": r, "error": exc.msg.get("code")})
                continue
            under, stall = res.underruns()
            out.append({
                "client": i, "request": r, "chars": len(text), "sentAt": round(t_send, 4),
                "firstAudioMs": round(1000 * res.t_first_audio, 2) if res.t_first_audio is not None else None,
                "totalMs": round(1000 * res.t_complete, 2), "audioSeconds": round(res.audio_seconds, 4),
                "gapsMs": [round(1000 * g, 2) for g in res.gaps()], "underruns": under,
                "stallMs": round(1000 * stall, 2), "frames": len(res.arrivals),
                "serverFirstAudioMs": res.complete.get("firstAudioMs"),
            })
            if a.think:
                await asyncio.sleep(a.think)
    finally:
        await ws.close()
    return out


def health(url: str) -> dict | None:
    http = url.replace("ws://", "http://").replace("wss://", "https://").split("/api/")[0] + "/healthz"
    try:
        with urllib.request.urlopen(http, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())
    except OSError:
        return None


def random_full_size_checkpoint() -> str:
    """A random-weight checkpoint with the released 0.6B-Base sizes, built natively (no torch,
    no download), for timing on machines that cannot fetch the real weights."""
    dst = paths.cache_dir() / "benchmarks" / "random-0.6b-base"
    if not (dst / "config.json").exists():
        import qwen3tts_jax.convert.demo as demo

        demo.DEMO_SIZES = {k: {} for k in demo.DEMO_SIZES}  # keep the released sizes
        demo.build_demo_checkpoint(dst)
    return str(dst)


def spawn(a: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "qwen3tts_jax.server", "--port", str(port), "--batch-slots", str(a.batch_slots),
           "--max-sessions", str(max(64, a.clients * 2)), "--dtype", a.dtype,
           "--voices-dir", str(a.voices_dir), "--log-level", "WARNING"]
    if a.random_full_size:
        a.model = random_full_size_checkpoint()
    if a.model:
        cmd += ["--model", a.model]
    log = open(REPO / "benchmarks" / "results" / "load-server.log.tmp", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=log)
    url = f"ws://127.0.0.1:{port}/api/v1/speak"
    deadline = time.monotonic() + a.load_timeout
    while time.monotonic() < deadline:
        h = health(url)
        if h and h.get("status") == "ok":  # loaded and warmed up (warm-up runs before "ok")
            return proc, url
        if h and h.get("status") == "failed":
            proc.terminate()
            raise SystemExit(f"the model failed to load: {h.get('error')}")
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log.name}")
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("server did not become ready in time")


async def run(a: argparse.Namespace) -> dict:
    before = health(a.url) or {}
    t0 = time.perf_counter()
    per_client = await asyncio.gather(*(client(i, a, t0) for i in range(a.clients)), return_exceptions=True)
    wall = time.perf_counter() - t0
    after = health(a.url) or {}
    reqs, failures = [], []
    for c in per_client:
        if isinstance(c, BaseException):
            failures.append(repr(c))
        else:
            reqs.extend(r for r in c if "error" not in r)
            failures.extend(r["error"] for r in c if "error" in r)
    first = [r["firstAudioMs"] for r in reqs if r["firstAudioMs"] is not None]
    gaps = [g for r in reqs for g in r["gapsMs"]]
    audio = sum(r["audioSeconds"] for r in reqs)
    steps = after.get("steps", 0) - before.get("steps", 0)
    step_s = after.get("stepSeconds", 0.0) - before.get("stepSeconds", 0.0)
    admits = after.get("admits", 0) - before.get("admits", 0)
    admit_s = after.get("admitSeconds", 0.0) - before.get("admitSeconds", 0.0)
    return {
        "config": {"clients": a.clients, "requestsPerClient": a.requests, "sampleRate": a.sample_rate,
                   "encoding": a.encoding, "maxFrames": a.max_frames, "stagger": a.stagger,
                   "model": after.get("model"), "batchSlots": after.get("batchSlots"),
                   "demoWeights": after.get("demoWeights"), "dtype": a.dtype if a.spawn else None,
                   "host": platform.node(), "machine": platform.machine(), "tag": a.tag},
        "requests": len(reqs), "failures": failures, "wallSeconds": round(wall, 3),
        "firstAudioMs": summary(first), "interChunkGapMs": summary(gaps),
        "underruns": {"requestsWithUnderrun": sum(1 for r in reqs if r["underruns"]),
                      "events": sum(r["underruns"] for r in reqs),
                      "stallMsTotal": round(sum(r["stallMs"] for r in reqs), 1)},
        "audioSeconds": round(audio, 3),
        "audioSecondsPerWallSecond": round(audio / wall, 3) if wall else None,
        "server": {"steps": steps, "meanStepMs": round(1000 * step_s / steps, 2) if steps else None,
                   "admits": admits, "meanAdmitMs": round(1000 * admit_s / admits, 2) if admits else None,
                   "deviceBusyFraction": round((step_s + admit_s) / wall, 3) if wall else None,
                   "framesPerStep": round(sum(r["frames"] for r in reqs) / steps, 2) if steps else None},
        "perRequest": reqs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="ws://127.0.0.1:8765/api/v1/speak")
    p.add_argument("--spawn", action="store_true", help="start `python -m qwen3tts_jax.server` for the run")
    p.add_argument("--model", default=None, help="with --spawn: checkpoint (default: demo)")
    p.add_argument("--random-full-size", action="store_true",
                   help="with --spawn: serve random weights at the released 0.6B-Base sizes (built natively)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-slots", type=int, default=16)
    p.add_argument("--voices-dir", type=Path, default=paths.cache_dir() / "benchmarks" / "voices")
    p.add_argument("--load-timeout", type=float, default=900)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=2, help="speak requests per client, in sequence")
    p.add_argument("--sample-rate", type=int, default=24000)
    p.add_argument("--encoding", default="pcm16")
    p.add_argument("--max-frames", type=int, default=None, help="cap each request (random weights rarely stop)")
    p.add_argument("--stagger", type=float, default=0.5, help="clients start spread over this many seconds")
    p.add_argument("--think", type=float, default=0.0, help="pause between a client's requests")
    p.add_argument("--token-env", default=None)
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    proc = None
    if a.spawn:
        proc, a.url = spawn(a)
    try:
        result = asyncio.run(run(a))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = a.out or REPO / "benchmarks" / "results" / f"load-{a.tag or 'run'}-{stamp}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    brief = {k: v for k, v in result.items() if k != "perRequest"}
    print(json.dumps(brief, indent=1))
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
