"""Load test for the /api/v1/speak server: N concurrent clients over loopback.

    # against a running server
    python benchmarks/load.py --url ws://127.0.0.1:8765/api/v1/speak --clients 16 --requests 2
    # or let it start one (demo checkpoint unless --model is given) and stop it afterwards
    python benchmarks/load.py --spawn [--model DIR] [--dtype bfloat16] --batch-slots 16 --clients 16
    # full-size timing without downloading weights (random weights, released sizes)
    python benchmarks/load.py --spawn --random-full-size --dtype bfloat16 --max-frames 100
    # open loop: Poisson arrivals at each rate, each arrival a new session (BENCHMARKS.md)
    python benchmarks/load.py --spawn --open-loop --rps 0.5 1 2 4 --duration 60 --warmup-s 10

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

# The open-loop mode draws from these and TEXTS alike (uniformly): 16 texts of 32-184 characters,
# median ~85, the span of an assistant's spoken turn.
LONG_TEXTS = [
    "Your package is out for delivery.",
    "I've added milk, eggs and a loaf of bread to your shopping list. Do you want anything else?",
    "Good morning! It's seven o'clock, the sky is clear, and the temperature is around twelve degrees, "
    "rising to twenty by noon.",
    "Your flight to Lisbon leaves at nine forty tomorrow morning from gate twenty-two. Boarding starts "
    "forty minutes before departure.",
    "I found three Italian restaurants within walking distance. The closest one is open until eleven and "
    "has good reviews for its pasta.",
    "To reset your password, open the settings page, choose security, and follow the link we just sent to "
    "the email address on your account.",
    "Here is a quick summary of today: two meetings this morning, a dentist appointment at four, and dinner "
    "with Sam at seven thirty at the usual place.",
    "Thanks for waiting. I checked with the billing team: the duplicate charge from last week has been "
    "reversed, and the refund should appear on your card within three to five working days.",
]
OPEN_TEXTS = TEXTS + LONG_TEXTS


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


def spawn(a: argparse.Namespace, log_name: str = "load-server.log.tmp") -> tuple[subprocess.Popen, str]:
    """Start `python -m qwen3tts_jax.server` on a free loopback port and wait until /healthz says
    ok. Reads from `a`: batch_slots, clients, dtype, voices_dir, model, random_full_size,
    load_timeout and (optional) max_sessions. Also used by benchmarks/soak.py."""
    sessions = getattr(a, "max_sessions", None) or max(64, a.clients * 2)
    return start_server(a, ["--batch-slots", str(a.batch_slots), "--max-sessions", str(sessions)], log_name)


def start_server(a: argparse.Namespace, flags: list[str], log_name: str) -> tuple[subprocess.Popen, str]:
    """The server with `flags` (WebSocket only) on a free port, once /healthz says ok: (process, url).
    Reads dtype, voices_dir, model, random_full_size and load_timeout from `a`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "qwen3tts_jax.server", "--port", str(port), "--no-http", *flags,
           "--dtype", a.dtype, "--voices-dir", str(a.voices_dir), "--log-level", "WARNING"]
    if a.random_full_size:
        a.model = random_full_size_checkpoint()
    if a.model:
        cmd += ["--model", a.model]
    log = open(REPO / "benchmarks" / "results" / log_name, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=log)
    url = f"ws://127.0.0.1:{port}/api/v1/speak"
    t0 = time.monotonic()
    while time.monotonic() < t0 + a.load_timeout:
        h = health(url)
        if h and h.get("status") == "ok":  # loaded and warmed up (warm-up runs before "ok")
            print(f"server ready in {time.monotonic() - t0:.1f} s", file=sys.stderr)
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


# -- open loop ---------------------------------------------------------------------------------
# Arrivals follow a Poisson process at the target rate (exponential gaps from a seeded RNG),
# whatever the server is doing: a slow server builds a queue instead of slowing the clients down
# (the closed loop above cannot show that). Each arrival is a new user: connect, ready, start,
# one speak, close. Latency is counted from the *scheduled* arrival, so a load generator that
# falls behind does not hide queueing (no coordinated omission).


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else None
    except (OSError, subprocess.SubprocessError):
        return None


def frames_for(text: str, a: argparse.Namespace) -> int | None:
    """The request's maxFrames: --max-frames if given, else the length of real speech for the text
    (--frames-per-char; 0.8 frames = 64 ms per character, ~15.6 characters per second)."""
    if a.max_frames:
        return a.max_frames
    if a.frames_per_char:
        return max(8, round(len(text) * a.frames_per_char))
    return None


async def arrival(idx: int, sched: float, text: str, a: argparse.Namespace, t_start: float) -> dict:
    token = os.environ.get(a.token_env) if a.token_env else None
    dispatched = time.perf_counter() - t_start
    rec = {"i": idx, "arrivalS": round(sched, 4), "dispatchLateMs": round(1000 * (dispatched - sched), 2),
           "chars": len(text)}
    ws = None
    try:
        try:
            ws, _, _ = await open_session(a.url, sample_rate=a.sample_rate, encoding=a.encoding, token=token,
                                          open_timeout=a.request_timeout)
        except ServerError as exc:
            rec["error"] = exc.msg.get("code") or "SERVER_ERROR"
            rec["errorPhase"] = "connect"
            return rec
        except Exception as exc:  # noqa: BLE001 - refused, timed out, handshake rejected
            rec["error"] = f"CONNECT_{type(exc).__name__}"
            rec["errorPhase"] = "connect"
            return rec
        t_speak = time.perf_counter() - t_start
        rec["connectMs"] = round(1000 * (t_speak - dispatched), 2)
        fields = {"_encoding": a.encoding, "_sample_rate": a.sample_rate, "seed": a.seed * 100000 + idx}
        frames = frames_for(text, a)
        if frames:
            fields["maxFrames"] = frames
        try:
            res = await asyncio.wait_for(speak(ws, text, **fields), a.request_timeout)
        except ServerError as exc:
            rec["error"] = exc.msg.get("code") or "SERVER_ERROR"
            rec["errorPhase"] = "speak"
            return rec
        except TimeoutError:
            rec["error"] = "CLIENT_TIMEOUT"
            return rec
        except Exception as exc:  # noqa: BLE001 - a dropped connection is a result, not a crash
            rec["error"] = f"CLOSED_{type(exc).__name__}"
            return rec
        under, stall = res.underruns()
        first = res.t_first_audio
        rec.update({
            "speakS": round(t_speak, 4),
            "firstAudioMs": round(1000 * first, 2) if first is not None else None,
            "arrivalToFirstAudioMs": round(1000 * (t_speak + first - sched), 2) if first is not None else None,
            "doneS": round(t_speak + res.t_complete, 4), "totalMs": round(1000 * res.t_complete, 2),
            "audioSeconds": round(res.audio_seconds, 4), "frames": len(res.arrivals),
            "maxFrames": frames, "underruns": under, "stallMs": round(1000 * stall, 2),
            "maxGapMs": round(1000 * max(res.gaps()), 2) if len(res.arrivals) > 1 else None,
            "serverFirstAudioMs": res.complete.get("firstAudioMs"),
        })
        return rec
    except asyncio.CancelledError:
        rec["error"] = "DRAIN_TIMEOUT"  # still running when the drain limit ran out
        return rec
    finally:
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 5)
            except Exception:  # noqa: BLE001
                pass


async def sample_health(url: str, t_start: float, out: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        h = await asyncio.to_thread(health, url) or {}
        out.append({"t": round(time.perf_counter() - t_start, 2), "sessions": h.get("sessions"),
                    "activeSlots": h.get("activeSlots"), "pendingRequests": h.get("pendingRequests")})
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


async def wait_idle(url: str, limit: float = 60) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        h = await asyncio.to_thread(health, url) or {}
        if h.get("sessions") == 0 and h.get("activeSlots") == 0 and h.get("pendingRequests") == 0:
            return True
        await asyncio.sleep(0.5)
    return False


def _mean_max(samples: list[dict], key: str) -> dict:
    vals = [s[key] for s in samples if s.get(key) is not None]
    return {"mean": round(float(np.mean(vals)), 2) if vals else None, "max": max(vals) if vals else None}


async def open_loop_rate(rate: float, k: int, a: argparse.Namespace) -> dict:
    rng = random.Random(a.seed * 7919 + k)
    horizon = a.warmup_s + a.duration
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= horizon:
            break
        arrivals.append((t, rng.choice(OPEN_TEXTS)))
    before = await asyncio.to_thread(health, a.url) or {}
    stop = asyncio.Event()
    samples: list[dict] = []
    t0 = time.perf_counter()
    sampler = asyncio.create_task(sample_health(a.url, t0, samples, stop))
    tasks = []
    for i, (at, text) in enumerate(arrivals):
        delay = at - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(arrival(i, at, text, a, t0)))
    t_sent = time.perf_counter() - t0
    done, pending = await asyncio.wait(tasks, timeout=a.drain_timeout) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    recs = [r for r in await asyncio.gather(*tasks)] if tasks else []
    drained = time.perf_counter() - t0
    stop.set()
    await sampler
    after = await asyncio.to_thread(health, a.url) or {}
    idle = await wait_idle(a.url)

    window = [r for r in recs if r["arrivalS"] >= a.warmup_s]
    ok = [r for r in window if "error" not in r]
    errors: dict[str, int] = {}
    for r in window:
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    first = [r["firstAudioMs"] for r in ok if r["firstAudioMs"] is not None]
    user_first = [r["arrivalToFirstAudioMs"] for r in ok if r["arrivalToFirstAudioMs"] is not None]
    last_done = max((r["doneS"] for r in ok), default=horizon)
    span = max(a.duration, last_done - a.warmup_s)
    audio = sum(r["audioSeconds"] for r in ok)
    with_under = sum(1 for r in ok if r["underruns"])
    steps = after.get("steps", 0) - before.get("steps", 0)
    step_s = after.get("stepSeconds", 0.0) - before.get("stepSeconds", 0.0)
    admit_s = after.get("admitSeconds", 0.0) - before.get("admitSeconds", 0.0)
    measured = [s for s in samples if a.warmup_s <= s["t"] <= horizon]
    slo_p95 = pct(user_first if a.slo_metric == "arrival" else first, 95)
    reasons = []
    if not ok:
        reasons.append("no request completed")
    if slo_p95 is None or slo_p95 >= a.slo_ms:
        reasons.append(f"p95 first audio ({a.slo_metric}) {slo_p95} ms >= {a.slo_ms:g} ms")
    if with_under > a.underrun_budget * max(1, len(ok)):
        reasons.append(f"{with_under} requests under-ran")
    if errors:
        reasons.append(f"errors {errors}")
    out = {
        "targetRps": rate, "arrivals": len(recs), "measuredArrivals": len(window),
        "offeredRps": round(len(window) / a.duration, 3), "completed": len(ok), "errors": errors,
        "achievedRps": round(len(ok) / span, 3), "measuredSpanS": round(span, 2),
        "firstAudioMs": summary(first), "arrivalToFirstAudioMs": summary(user_first),
        "connectMs": summary([r["connectMs"] for r in window if "connectMs" in r]),
        "underruns": {"requestsWithUnderrun": with_under, "events": sum(r["underruns"] for r in ok),
                      "stallMsTotal": round(sum(r["stallMs"] for r in ok), 1)},
        "chars": summary([r["chars"] for r in window]),
        "audioSecondsPerRequest": summary([r["audioSeconds"] for r in ok]),
        "audioSecondsPerWallSecond": round(audio / span, 3),
        "dispatchLateMs": summary([r["dispatchLateMs"] for r in recs]),
        "sendSeconds": round(t_sent, 2), "drainSeconds": round(drained - t_sent, 2), "idleAfter": idle,
        "server": {"steps": steps, "meanStepMs": round(1000 * step_s / steps, 2) if steps else None,
                   "deviceBusyFraction": round((step_s + admit_s) / drained, 3) if drained else None,
                   "activeSlots": _mean_max(measured, "activeSlots"),
                   "pendingRequests": _mean_max(measured, "pendingRequests"),
                   "sessions": _mean_max(measured, "sessions")},
        "sustained": not reasons, "notSustainedBecause": reasons,
        "perRequest": recs,
    }
    return out


async def run_open_loop(a: argparse.Namespace) -> dict:
    h = await asyncio.to_thread(health, a.url) or {}
    commit = git_commit()
    rates = []
    for k, rate in enumerate(a.rps):
        r = await open_loop_rate(rate, k, a)
        rates.append(r)
        print(f"{rate:g} rps: {r['completed']}/{r['measuredArrivals']} ok, errors {r['errors']}, first audio "
              f"p50/p95/p99 {r['arrivalToFirstAudioMs']['p50']}/{r['arrivalToFirstAudioMs']['p95']}/"
              f"{r['arrivalToFirstAudioMs']['p99']} ms (arrival), under-ran {r['underruns']['requestsWithUnderrun']}, "
              f"achieved {r['achievedRps']} rps, step {r['server']['meanStepMs']} ms, "
              f"{'sustained' if r['sustained'] else 'NOT sustained'}", file=sys.stderr, flush=True)
    # The highest rate that is sustained, with every lower rate of the sweep sustained too.
    best = best_offered = None
    for r in sorted(rates, key=lambda r: r["targetRps"]):
        if not r["sustained"]:
            break
        best, best_offered = r["targetRps"], r["offeredRps"]
    return {
        "config": {"mode": "open-loop", "rps": a.rps, "durationS": a.duration, "warmupS": a.warmup_s,
                   "seed": a.seed, "sessionPerRequest": True, "sampleRate": a.sample_rate,
                   "encoding": a.encoding, "maxFrames": a.max_frames, "framesPerChar": a.frames_per_char,
                   "drainTimeoutS": a.drain_timeout, "requestTimeoutS": a.request_timeout,
                   "texts": len(OPEN_TEXTS), "model": h.get("model"), "batchSlots": h.get("batchSlots"),
                   "maxSessions": h.get("maxSessions"), "demoWeights": h.get("demoWeights"),
                   "dtype": a.dtype if a.spawn else None, "host": platform.node(), "machine": platform.machine(),
                   "cpus": os.cpu_count(), "commit": commit, "tag": a.tag},
        "slo": {"metric": a.slo_metric, "p95FirstAudioMs": a.slo_ms, "underrunBudget": a.underrun_budget,
                "errorsAllowed": 0,
                "definition": "a rate is sustained when, over its measured window, the p95 first audio "
                              "(arrival: from the scheduled arrival, so it includes connect and start) is "
                              "under slo-ms, no more than underrun-budget of the completed requests under-ran, "
                              "and no request failed; the highest sustained rate is the highest of the sweep "
                              "with every lower rate sustained too"},
        "highestSustainedRps": best,
        "highestSustainedOfferedRps": best_offered,  # a Poisson draw's arrivals in the window / duration
        "rates": rates,
    }


def open_loop_table(result: dict) -> str:
    rows = ["| target rps | offered rps | achieved rps | ok / arrivals | first audio p50 / p95 / p99 ms (arrival) "
            "| speak->first p50 / p95 ms | requests with under-run | errors | step ms | slots mean / max "
            "| sustained |", "|" + "---|" * 11]
    for r in result["rates"]:
        u, f = r["arrivalToFirstAudioMs"], r["firstAudioMs"]
        rows.append(f"| {r['targetRps']:g} | {r['offeredRps']} | {r['achievedRps']} | {r['completed']} / "
                    f"{r['measuredArrivals']} | {u['p50']} / {u['p95']} / {u['p99']} | {f['p50']} / {f['p95']} | "
                    f"{r['underruns']['requestsWithUnderrun']} | {r['errors'] or 0} | {r['server']['meanStepMs']} | "
                    f"{r['server']['activeSlots']['mean']} / {r['server']['activeSlots']['max']} | "
                    f"{'yes' if r['sustained'] else 'no'} |")
    return "\n".join(rows)


def add_server_args(p: argparse.ArgumentParser) -> None:
    """The options of a run against a server: its URL, or one to start (`start_server`)."""
    p.add_argument("--url", default="ws://127.0.0.1:8765/api/v1/speak")
    p.add_argument("--spawn", action="store_true", help="start `python -m qwen3tts_jax.server` for the run")
    p.add_argument("--model", default=None, help="with --spawn: checkpoint (default: the embedded demo)")
    p.add_argument("--random-full-size", action="store_true",
                   help="with --spawn: random weights at the released 0.6B-Base sizes (built natively)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--voices-dir", type=Path, default=paths.cache_dir() / "benchmarks" / "voices")
    p.add_argument("--load-timeout", type=float, default=900)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(p)
    p.add_argument("--batch-slots", type=int, default=16)
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
    p.add_argument("--max-sessions", type=int, default=None, help="with --spawn (default max(64, 2 x clients))")
    o = p.add_argument_group("open loop (--open-loop; the options above about clients do not apply)")
    o.add_argument("--open-loop", action="store_true",
                   help="Poisson arrivals at each --rps, each a new session with one speak")
    o.add_argument("--rps", type=float, nargs="+", default=[0.5, 1, 2], help="target arrival rates, in order")
    o.add_argument("--duration", type=float, default=60, help="measured seconds per rate (after the warm-up)")
    o.add_argument("--warmup-s", type=float, default=10, help="arrivals in the first seconds of each rate are "
                   "served but left out of the statistics")
    o.add_argument("--seed", type=int, default=0, help="arrival times, texts and request seeds")
    o.add_argument("--frames-per-char", type=float, default=0.8,
                   help="maxFrames per request = characters x this, when --max-frames is not given (random "
                        "weights rarely stop; 0.8 = the length of real speech); 0 = the server's budget")
    o.add_argument("--slo-ms", type=float, default=500, help="p95 first-audio target for a rate to count as sustained")
    o.add_argument("--slo-metric", choices=["arrival", "speak"], default="arrival",
                   help="arrival: from the scheduled arrival (connect + start + speak); speak: T1 - T0")
    o.add_argument("--underrun-budget", type=float, default=0.0,
                   help="fraction of completed requests allowed to under-run in a sustained rate")
    o.add_argument("--drain-timeout", type=float, default=120,
                   help="after the last arrival, wait this long for requests in flight (the rest: DRAIN_TIMEOUT)")
    o.add_argument("--request-timeout", type=float, default=180, help="client-side limit per connect and per speak")
    a = p.parse_args()
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    proc = None
    if a.spawn:
        proc, a.url = spawn(a)
    try:
        result = asyncio.run(run_open_loop(a) if a.open_loop else run(a))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    kind = "openloop" if a.open_loop else "load"  # distinct prefixes: "load-*" is closed-loop only
    out = a.out or REPO / "benchmarks" / "results" / f"{kind}-{a.tag or 'run'}-{stamp}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    if a.open_loop:
        brief = {**result, "rates": [{k: v for k, v in r.items() if k != "perRequest"} for r in result["rates"]]}
        print(json.dumps(brief, indent=1))
        print(open_loop_table(result))
        print(f"highest sustained rate: {result['highestSustainedRps']} rps (offered "
              f"{result['highestSustainedOfferedRps']})", file=sys.stderr)
    else:
        brief = {k: v for k, v in result.items() if k != "perRequest"}
        print(json.dumps(brief, indent=1))
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
