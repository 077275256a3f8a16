"""Streamed text input under an LLM-like feeder: N sessions, each speaking while its text arrives.

    # let it start a server (demo checkpoint unless --model is given) and stop it afterwards
    python benchmarks/text_stream.py --spawn --sessions 1 4 --rates 20 50 100 --burst 10
    python benchmarks/text_stream.py --spawn --model DIR --dtype bfloat16 --sessions 1 16 --max-frames 0
    # against a running server
    python benchmarks/text_stream.py --url ws://127.0.0.1:8765/api/v1/speak --sessions 4

Each session speaks 2-3 sentence replies one after another as streamed requests (`speak` with
"textStream": true, `appendText`, `endText`; `qwen3tts_jax.server.client.speak_streamed`),
the text cut into LLM-token-like pieces (`text_pieces`: spaces and up to 4 non-space
characters a piece) sent at R pieces per second, for each R of --rates, and in bursts
(--burst N pieces at once every N / --burst-rate seconds). Then the same texts with the
same seeds as whole-text `speak`s, side by side. Per request: first audio (ms from the first
text piece sent; from the `speak` for whole texts), the server's textWaitMs (how long the
row waited for text, making no audio), under-runs (a player that starts at the first sample
and plays in real time runs dry: count and total gap), the total time, and whether the PCM
equals the whole text's. Medians and p95 per (mode, sessions) go to a markdown table on
stdout; everything to benchmarks/results/text-stream-<tag>-<time>.json.

Random weights (the demo checkpoint, `--random-full-size`) rarely emit the end token, so each
request is capped at the audio a speaker needs for its text (--max-frames auto: 12.5 frames
per 14 characters, ~14 characters of English a second); --max-frames 0 lets real weights stop.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

from load import REPO, add_server_args, health, pct, start_server
from qwen3tts_jax.server.client import ServerError, open_session, speak, speak_streamed, text_pieces

# Replies an assistant might stream: 2-3 sentences, 150-230 characters.
TEXTS = [
    "Sure, I can help with that. Your order shipped yesterday from our warehouse in Leeds, and it "
    "should arrive by Friday afternoon. I'll send you the tracking link by email.",
    "The meeting has been moved to three o'clock on Thursday. It will be in the small conference "
    "room on the second floor, and lunch will be provided for everyone who attends.",
    "It looks like it will rain this afternoon, with a high of fourteen degrees. You might want "
    "to bring an umbrella, and the wind should calm down by the evening.",
    "Turn left at the next intersection, then continue straight for about two kilometres. The "
    "station will be on your right, just after the bridge. Parking is free after six.",
    "Thanks for waiting. I found your account, and the payment from last Tuesday went through "
    "correctly. Is there anything else I can help you with today?",
    "A good first step is to drink a glass of water and take a short walk. If the headache lasts "
    "more than a day, or gets worse, it would be wise to see a doctor.",
    "Your appointment is confirmed for Monday at half past nine. We will send a reminder the day "
    "before. Please bring your insurance card and arrive ten minutes early.",
    "The recipe needs two cups of flour, one egg, and a pinch of salt. Mix everything slowly, then "
    "let the dough rest for twenty minutes before you roll it out.",
]
FRAME_S = 0.08  # one 12.5 Hz codec frame of audio
XVEC_ID = "bench-xvec"


def auto_frames(text: str) -> int:
    """Frames a speaker needs for `text`, at ~14 characters of English a second."""
    return math.ceil(12.5 * len(text) / 14)


def modes(a: argparse.Namespace) -> list[dict]:
    out = [{"name": f"{r:g} tok/s", "rate": r, "burst": 1} for r in a.rates]
    if a.burst > 1:
        out.append({"name": f"bursts of {a.burst} every {a.burst / a.burst_rate:g} s", "rate": a.burst_rate,
                    "burst": a.burst})
    return out


async def register_xvector_voice(a: argparse.Namespace) -> None:
    """The shipped default voice's reference clip as an x-vector-only voice (no transcript):
    its prompt needs one text id, where the ICL default needs `1 + ref frames - ref text ids`."""
    token = os.environ.get(a.token_env) if a.token_env else None
    audio = base64.b64encode((REPO / "server" / "voices" / "default" / "reference.wav").read_bytes()).decode()
    ws, _, _ = await open_session(a.url, token=token, open_timeout=60)
    try:
        await ws.send(json.dumps({"type": "registerVoice", "voiceId": XVEC_ID, "audio": audio, "overwrite": True}))
        reply = json.loads(await ws.recv())
        if reply.get("type") != "voiceRegistered":
            raise ServerError(reply)
    finally:
        await ws.close()


async def session(i: int, n_requests: int, voice: str | None, mode: dict | None, a: argparse.Namespace) -> list[dict]:
    """One client: `n_requests` replies in sequence, streamed (`mode`) or whole (`mode` None)."""
    await asyncio.sleep(random.Random(i).uniform(0, a.stagger))
    token = os.environ.get(a.token_env) if a.token_env else None

    async def connect():
        ws, _, _ = await open_session(a.url, voice=voice, sample_rate=a.sample_rate, encoding=a.encoding,
                                      token=token, open_timeout=60)
        return ws

    ws = await connect()
    out = []
    try:
        for r in range(n_requests):
            text = TEXTS[(i + r) % len(TEXTS)]
            fields = {"_encoding": a.encoding, "_sample_rate": a.sample_rate, "seed": i * 1000 + r}
            frames = auto_frames(text) if a.max_frames is None else a.max_frames
            if frames:
                fields["maxFrames"] = frames
            pieces = text_pieces(text)
            rec = {"client": i, "request": r, "chars": len(text), "pieces": len(pieces), "maxFrames": frames or None}
            try:
                if mode is None:
                    res = await speak(ws, text, **fields)
                else:
                    res = await speak_streamed(ws, pieces, mode["rate"], mode["burst"], **fields)
            except ServerError as exc:
                out.append({**rec, "error": exc.msg.get("code"), "message": exc.msg.get("message")})
                await ws.close()
                ws = await connect()  # late appendText answers would land in the next request
                continue
            under, stall = res.underruns()
            gaps = res.gaps()
            rec.update({
                "firstAudioMs": round(1000 * res.t_first_audio, 2) if res.t_first_audio is not None else None,
                "totalMs": round(1000 * res.t_complete, 2), "audioSeconds": round(res.audio_seconds, 4),
                "underruns": under, "stallMs": round(1000 * stall, 2), "frames": len(res.arrivals),
                "slowGaps": sum(1 for g in gaps if g > FRAME_S),  # slower than playback there
                "maxGapMs": round(1000 * max(gaps), 2) if gaps else None,
                "serverFirstAudioMs": res.complete.get("firstAudioMs"),
                "pcmSha1": hashlib.sha1(res.pcm).hexdigest()[:16],
            })
            if mode is not None:
                rec["textWaitMs"] = res.complete.get("textWaitMs")
                rec["textMs"] = round(1000 * res.t_text_end, 2) if res.t_text_end is not None else None
                if res.t_text_end is None:  # it ended before all its text went out
                    rec["textCut"] = True
                    await ws.close()
                    ws = await connect()
            out.append(rec)
            if a.think:
                await asyncio.sleep(a.think)
    finally:
        await ws.close()
    return out


def p50_p95(values: list) -> list:
    values = [v for v in values if v is not None]
    return [pct(values, 50), pct(values, 95)]


async def run_mode(a: argparse.Namespace, voice: str, n: int, mode: dict | None, whole: dict,
                   name: str | None = None) -> dict:
    before = health(a.url) or {}
    t0 = time.perf_counter()
    vid = {"default": None, "xvec": XVEC_ID}.get(voice, voice)
    per = await asyncio.gather(*(session(i, a.requests, vid, mode, a) for i in range(n)), return_exceptions=True)
    wall = time.perf_counter() - t0
    after = health(a.url) or {}
    reqs, failures = [], []
    for c in per:
        if isinstance(c, BaseException):
            failures.append(repr(c))
            continue
        reqs.extend(r for r in c if "error" not in r)
        failures.extend(f"{r['error']}: {r['message']}" for r in c if "error" in r)
    steps = after.get("steps", 0) - before.get("steps", 0)
    step_s = after.get("stepSeconds", 0.0) - before.get("stepSeconds", 0.0)
    matches = [r["pcmSha1"] == whole[key] for r in reqs if (key := (r["client"], r["request"])) in whole]
    return {
        "voice": voice, "mode": name or (mode["name"] if mode else "whole text"),
        "tokensPerSecond": mode["rate"] if mode else None, "burst": mode["burst"] if mode else None,
        "sessions": n, "requests": len(reqs), "failures": failures,
        "wallSeconds": round(wall, 3),
        "firstAudioMs": p50_p95([r["firstAudioMs"] for r in reqs]),
        "textWaitMs": p50_p95([r.get("textWaitMs") for r in reqs]) if mode else None,
        "textMs": p50_p95([r.get("textMs") for r in reqs]) if mode else None,
        "totalMs": p50_p95([r["totalMs"] for r in reqs]),
        "audioSeconds": p50_p95([r["audioSeconds"] for r in reqs]),
        "requestsWithUnderrun": sum(1 for r in reqs if r["underruns"]),
        "underrunEvents": sum(r["underruns"] for r in reqs),
        "stallMs": p50_p95([r["stallMs"] for r in reqs]),
        "stallMsTotal": round(sum(r["stallMs"] for r in reqs), 1),
        "slowGaps": sum(r["slowGaps"] for r in reqs),
        "textCut": sum(1 for r in reqs if r.get("textCut")),
        "samePcmAsWhole": [sum(matches), len(matches)] if whole else None,
        "server": {"steps": steps, "meanStepMs": round(1000 * step_s / steps, 2) if steps else None},
        "perRequest": reqs,
    }


def fmt(pair: list | None, digits: int = 0) -> str:
    if not pair or pair[0] is None:
        return "-"
    return " / ".join(f"{v:,.{digits}f}" for v in pair)


def table(runs: list[dict]) -> str:
    rows = ["| voice | mode | sessions | requests | first audio p50 / p95 ms | textWaitMs p50 / p95 | requests with "
            "under-run | under-run gap p50 / p95 ms (total) | total p50 / p95 ms | text sent by p50 ms | "
            "audio s p50 | step ms | same PCM as whole |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        same = f"{r['samePcmAsWhole'][0]} / {r['samePcmAsWhole'][1]}" if r["samePcmAsWhole"] else "-"
        failed = f" ({len(r['failures'])} failed)" if r["failures"] else ""
        rows.append(
            f"| {r['voice']} | {r['mode']} | {r['sessions']} | {r['requests']}{failed} "
            f"| {fmt(r['firstAudioMs'])} | {fmt(r['textWaitMs'])} | {r['requestsWithUnderrun']} / {r['requests']} "
            f"| {fmt(r['stallMs'])} ({r['stallMsTotal']:,.0f}) | {fmt(r['totalMs'])} "
            f"| {fmt(r['textMs'][:1]) if r['textMs'] else '-'} | {fmt(r['audioSeconds'][:1], 2)} "
            f"| {r['server']['meanStepMs'] or '-'} | {same} |")
    return "\n".join(rows)


def spawn(a: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """`python -m qwen3tts_jax.server` on a free port, WebSocket only, until /healthz says ok."""
    slots = a.batch_slots or max(a.sessions)
    return start_server(a, ["--batch-slots", str(slots), "--max-sessions", str(max(64, 2 * max(a.sessions)))],
                        "text-stream-server.log.tmp")


async def run(a: argparse.Namespace) -> list[dict]:
    """Per voice and session count: whole texts, each streamed mode, whole texts again (is the
    PCM of a batch of rows reproducible at all, streamed or not)."""
    if "xvec" in a.voices:
        await register_xvector_voice(a)
    runs = []
    for voice in a.voices:
        for n in a.sessions:
            whole_run = await run_mode(a, voice, n, None, {})
            whole = {(r["client"], r["request"]): r["pcmSha1"] for r in whole_run["perRequest"]}
            runs.append(whole_run)
            for mode in modes(a):
                runs.append(await run_mode(a, voice, n, mode, whole))
                print(f"{voice}, {n} sessions, {mode['name']}: done", file=sys.stderr)
            runs.append(await run_mode(a, voice, n, None, whole, name="whole text, again"))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(p)
    p.add_argument("--batch-slots", type=int, default=None, help="with --spawn (default: the most sessions)")
    p.add_argument("--voices", nargs="+", default=["default", "xvec"],
                   help="voice ids; 'default' = the server's default (the demo's: an ICL clone), 'xvec' = the "
                        "shipped default's clip registered as an x-vector-only voice (default: both)")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 4], help="concurrent sessions, one run each")
    p.add_argument("--requests", type=int, default=3, help="replies per session, in sequence, per mode")
    p.add_argument("--rates", type=float, nargs="*", default=[20, 50, 100], help="text pieces per second")
    p.add_argument("--burst", type=int, default=10, help="the bursts mode: pieces at once (0 or 1: no bursts mode)")
    p.add_argument("--burst-rate", type=float, default=50, help="the bursts mode's mean pieces per second")
    p.add_argument("--max-frames", type=int, default=None,
                   help="cap per request (default: auto, 12.5 frames per 14 characters; 0: no cap)")
    p.add_argument("--sample-rate", type=int, default=24000)
    p.add_argument("--encoding", default="pcm16")
    p.add_argument("--stagger", type=float, default=0.5, help="sessions start spread over this many seconds")
    p.add_argument("--think", type=float, default=0.0, help="pause between a session's requests")
    p.add_argument("--token-env", default=None)
    p.add_argument("--tag", default="")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    proc = None
    if a.spawn:
        proc, a.url = spawn(a)
    try:
        h = health(a.url) or {}
        runs = asyncio.run(run(a))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    result = {"config": {"voices": a.voices, "sessions": a.sessions, "requestsPerSession": a.requests, "rates": a.rates,
                         "burst": a.burst, "burstRate": a.burst_rate, "maxFrames": a.max_frames or "auto",
                         "sampleRate": a.sample_rate, "encoding": a.encoding, "stagger": a.stagger,
                         "model": h.get("model"), "batchSlots": h.get("batchSlots"),
                         "demoWeights": h.get("demoWeights"), "dtype": a.dtype if a.spawn else None,
                         "host": platform.node(), "machine": f"{platform.machine()} {os.cpu_count()} cores",
                         "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "tag": a.tag},
              "runs": runs}
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = a.out or REPO / "benchmarks" / "results" / f"text-stream-{a.tag or 'run'}-{stamp}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(runs))
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
