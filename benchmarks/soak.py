"""Soak test for the /api/v1/speak server: K workers doing what real clients do, for a bounded time.

    python benchmarks/soak.py --duration 60                   # smoke test (spawns a demo server)
    nohup python benchmarks/soak.py --duration 1200 --tag demo-cpu-20min > soak.log 2>&1 &
    python benchmarks/soak.py --url ws://127.0.0.1:8765/api/v1/speak --pid PID --duration 600

Loopback only. Each of `--workers` workers, until `--duration` seconds or `--max-requests`
speak requests have passed, opens a session (random sample rate and encoding) and does 1-4
random actions on it:

  speak       a whole text to its `complete` (first audio and under-runs recorded)
  several     2-3 speaks sent at once (queued on the session), each to its `complete`
  stream      a streamed request: `textStream` speak, `appendText` pieces, `endText`, `complete`
  cancel      a speak, `cancel` after 1-8 audio frames, its `complete` with `cancelled: true`
  disconnect  a speak, then after 1-8 audio frames the TCP transport is aborted (no close frame)
  bad         one bad message (malformed JSON, unknown type, binary frame, empty or too-long
              text, wrong-typed field, appendText with nothing open, bad sampleRate, oversized
              frame): its error code must be the one that message provokes

then ends it with `stop`, a close or an abort. Errors of the provoked code count as provoked;
every other error (a different code, a connection dropped by the server, a client-side timeout)
counts as unexpected and is listed. The server's resident memory (VmRSS), open file
descriptors (/proc/PID/fd), threads and memory mappings are sampled at the start (after
warm-up, before any request), every `--sample-every` seconds, and at the end (after every
session has closed and the server is idle), with the p95 first audio of each interval. JSON to
benchmarks/results/soak-<tag>-<time>.json and a summary table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import OPEN_TEXTS, REPO, git_commit, health, pct, spawn, summary  # noqa: E402
from qwen3tts_jax.server.client import ServerError, open_session  # noqa: E402

from qwen3tts_jax import paths  # noqa: E402

ACTIONS = {"speak": 0.36, "several": 0.08, "stream": 0.1, "cancel": 0.16, "disconnect": 0.1, "bad": 0.2}

# (name, what to send, the error code it must provoke). A str is sent as a text frame, bytes as
# a binary frame, a dict as JSON.
BAD = [
    ("malformed_json", "{not json", "BAD_REQUEST"),
    ("not_an_object", "[1, 2, 3]", "BAD_REQUEST"),
    ("unknown_type", {"type": "dance"}, "BAD_REQUEST"),
    ("binary_frame", b"\x00\x01\x02\x03", "BAD_REQUEST"),
    ("empty_text", {"type": "speak", "text": "   "}, "INVALID_TEXT"),
    ("text_too_long", {"type": "speak", "text": "word " * 500}, "INVALID_TEXT"),
    ("wrong_type_field", {"type": "speak", "text": "Hello.", "seed": "seven"}, "BAD_REQUEST"),
    ("append_without_stream", {"type": "appendText", "text": "more"}, "BAD_REQUEST"),
    ("bad_sample_rate", {"type": "start", "sampleRate": 12345}, "BAD_REQUEST"),
    ("oversized_frame", {"type": "speak", "text": "x" * 70000}, "BAD_REQUEST"),
]


def proc_stats(pid: int) -> dict:
    out: dict = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rssMiB"] = round(int(line.split()[1]) / 1024, 1)
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/maps") as f:
            out["maps"] = sum(1 for _ in f)
    except OSError as exc:
        out["error"] = repr(exc)
    return out


def metrics_text(url: str) -> dict:
    """qwen3tts_requests_total and qwen3tts_errors_total from /metrics, by label set."""
    import urllib.request

    http = url.replace("ws://", "http://").split("/api/")[0] + "/metrics"
    out: dict = {"requests": {}, "errors": {}}
    try:
        with urllib.request.urlopen(http, timeout=10) as r:
            text = r.read().decode()
    except OSError as exc:
        return {"error": repr(exc)}
    for line in text.splitlines():
        for name, key in (("qwen3tts_requests_total{", "requests"), ("qwen3tts_errors_total{", "errors")):
            if line.startswith(name):
                labels, value = line[len(name):].rsplit("} ", 1)
                if float(value):
                    out[key][labels] = int(float(value))
    return out


class Soak:
    def __init__(self, a: argparse.Namespace, url: str, pid: int | None):
        self.a, self.url, self.pid = a, url, pid
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + a.duration
        self.requests = 0  # speak requests sent (provoked bad speaks included)
        self.sessions = 0
        self.outcomes: dict[str, int] = {}
        self.provoked: dict[str, int] = {}
        self.unexpected: dict[str, int] = {}
        self.unexpected_log: list[dict] = []
        self.first: list[tuple[float, float]] = []  # (seconds since start when sent, first audio ms)
        self.underran = 0
        self.samples: list[dict] = []
        self.commit = git_commit()  # the code the server started with (others may commit meanwhile)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def done(self) -> bool:
        return time.perf_counter() >= self.deadline or self.requests >= self.a.max_requests

    def count(self, d: dict, key: str) -> None:
        d[key] = d.get(key, 0) + 1

    def bad_news(self, what: str, detail: str = "") -> None:
        self.count(self.unexpected, what)
        if len(self.unexpected_log) < 200:
            self.unexpected_log.append({"t": round(self.now(), 2), "what": what, "detail": detail[:300]})

    # -- one request -----------------------------------------------------------------------------
    async def recv(self, ws):
        return await asyncio.wait_for(ws.recv(), self.a.io_timeout)

    async def collect(self, ws, sent_at: float, rate: int, bps: int, *, stop_after: int | None = None):
        """Read until this request's complete/error (or, with stop_after, until that many audio
        frames). Returns (kind, message or None, frames, first audio s, arrivals)."""
        frames, first, arrivals = 0, None, []
        while True:
            raw = await self.recv(ws)
            t = time.perf_counter() - sent_at
            if isinstance(raw, bytes):
                frames += 1
                if first is None:
                    first = t
                arrivals.append((t, len(raw) // bps))
                if stop_after is not None and frames >= stop_after:
                    return "frames", None, frames, first, arrivals
                continue
            msg = json.loads(raw)
            if msg.get("type") in ("complete", "error"):
                return msg["type"], msg, frames, first, arrivals

    def record_first(self, sent_rel: float, first: float | None, arrivals, rate: int) -> None:
        if first is not None:
            self.first.append((sent_rel, 1000 * first))
        if arrivals:
            start, played, under = arrivals[0][0], arrivals[0][0], 0
            for t, n in arrivals:
                if t > played + 1e-4:
                    if t != start:
                        under += 1
                    played = t
                played += n / rate
            self.underran += 1 if under else 0

    def speak_msg(self, rng: random.Random, **extra) -> dict:
        text = rng.choice(OPEN_TEXTS)
        return {"type": "speak", "text": text, "seed": rng.randrange(1 << 30),
                "maxFrames": rng.randint(self.a.min_frames, self.a.max_frames), **extra}

    async def act(self, rng: random.Random, ws, action: str, rate: int, bps: int) -> bool:
        """One action; False when the session is gone (aborted by us)."""
        if action in ("speak", "cancel", "disconnect"):
            self.requests += 1
            sent_rel, sent = self.now(), time.perf_counter()
            await ws.send(json.dumps(self.speak_msg(rng)))
            stop_after = rng.randint(1, 8) if action != "speak" else None
            kind, msg, frames, first, arrivals = await self.collect(ws, sent, rate, bps, stop_after=stop_after)
            if kind == "error":
                self.bad_news(msg.get("code", "?"), json.dumps(msg))
                return True
            if kind == "complete":  # finished before the cancel/disconnect point
                self.record_first(sent_rel, first, arrivals, rate)
                self.count(self.outcomes, "complete" if action == "speak" else f"{action}_too_late")
                return True
            if first is not None:
                self.first.append((sent_rel, 1000 * first))
            if action == "disconnect":
                ws.transport.abort()
                self.count(self.outcomes, "disconnected")
                return False
            await ws.send(json.dumps({"type": "cancel"}))
            kind, msg, *_ = await self.collect(ws, sent, rate, bps)
            if kind == "complete" and msg.get("cancelled"):
                self.count(self.outcomes, "cancelled")
            elif kind == "complete":
                self.count(self.outcomes, "cancel_too_late")  # it ended between the last frame and the cancel
            else:
                self.bad_news(msg.get("code", "?"), json.dumps(msg))
            return True
        if action == "several":
            n = rng.randint(2, 3)
            sent_rel, sent = self.now(), time.perf_counter()
            for i in range(n):
                self.requests += 1
                await ws.send(json.dumps(self.speak_msg(rng, requestId=f"q{i}")))
            for i in range(n):
                kind, msg, frames, first, arrivals = await self.collect(ws, sent, rate, bps)
                if kind == "error":
                    self.bad_news(msg.get("code", "?"), json.dumps(msg))
                else:
                    if i == 0:
                        self.record_first(sent_rel, first, arrivals, rate)
                    self.count(self.outcomes, "complete_queued")
            return True
        if action == "stream":
            self.requests += 1
            words = rng.choice(OPEN_TEXTS).split(" ")
            cut = rng.randint(1, max(1, len(words) - 1))
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "speak", "text": " ".join(words[:cut]) + " ", "textStream": True,
                                      "seed": rng.randrange(1 << 30), "maxFrames": self.a.max_frames}))
            rest = words[cut:]
            while rest:
                k = rng.randint(1, 3)
                piece, rest = rest[:k], rest[k:]
                await asyncio.sleep(rng.uniform(0, 0.15))
                await ws.send(json.dumps({"type": "appendText", "text": " ".join(piece) + (" " if rest else "")}))
            await ws.send(json.dumps({"type": "endText"}))
            kind, msg, *_ = await self.collect(ws, sent, rate, bps)
            if kind == "error":
                self.bad_news(msg.get("code", "?"), json.dumps(msg))
            else:
                self.count(self.outcomes, "complete_streamed")
            return True
        # bad
        name, payload, code = rng.choice(BAD)
        if isinstance(payload, dict) and payload.get("type") == "speak":
            self.requests += 1
        await ws.send(payload if isinstance(payload, (str, bytes)) else json.dumps(payload))
        while True:  # the answer is an error; nothing of ours is running
            raw = await self.recv(ws)
            if isinstance(raw, bytes):
                continue
            msg = json.loads(raw)
            if msg.get("type") == "error":
                if msg.get("code") == code:
                    self.count(self.provoked, f"{code} ({name})")
                else:
                    self.bad_news(f"{msg.get('code')} for {name} (expected {code})", json.dumps(msg))
                return True

    # -- one session -----------------------------------------------------------------------------
    async def session(self, rng: random.Random) -> None:
        rate = rng.choice([24000, 24000, 16000, 48000])
        encoding = rng.choice(["pcm16", "pcm16", "pcm32f"])
        bps = 2 if encoding == "pcm16" else 4
        try:
            ws, _, _ = await open_session(self.url, sample_rate=rate, encoding=encoding, open_timeout=self.a.io_timeout)
        except ServerError as exc:
            self.bad_news(f"connect {exc.msg.get('code')}", json.dumps(exc.msg))
            await asyncio.sleep(1)
            return
        except Exception as exc:  # noqa: BLE001
            self.bad_news(f"connect {type(exc).__name__}", repr(exc))
            await asyncio.sleep(1)
            return
        self.sessions += 1
        alive = True
        try:
            for _ in range(rng.randint(1, 4)):
                if self.done():
                    break
                action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
                alive = await self.act(rng, ws, action, rate, bps)
                if not alive:
                    return
                await asyncio.sleep(rng.uniform(0, self.a.think))
            end = rng.choices(["stop", "close", "abort"], weights=[0.4, 0.4, 0.2])[0]
            if end == "stop":
                await ws.send(json.dumps({"type": "stop", "reason": "soak"}))
                while True:
                    raw = await self.recv(ws)
                    if not isinstance(raw, bytes) and json.loads(raw).get("type") == "stopped":
                        break
                await asyncio.wait_for(ws.close(), self.a.io_timeout)
            elif end == "close":
                await asyncio.wait_for(ws.close(), self.a.io_timeout)
            else:
                ws.transport.abort()
            self.count(self.outcomes, f"session_end_{end}")
            alive = False
        except TimeoutError:
            self.bad_news("client timeout", "no answer within --io-timeout")
        except Exception as exc:  # noqa: BLE001 - the server dropped us: unexpected
            self.bad_news(f"connection {type(exc).__name__}", repr(exc))
        finally:
            if alive:
                ws.transport.abort()

    async def worker(self, w: int) -> None:
        rng = random.Random(self.a.seed * 1000 + w)
        await asyncio.sleep(rng.uniform(0, 1))
        while not self.done():
            await self.session(rng)

    # -- sampling ------------------------------------------------------------------------------
    async def sample(self, label: str) -> dict:
        h = await asyncio.to_thread(health, self.url) or {}
        s = {"label": label, "t": round(self.now(), 1), "requests": self.requests,
             **(proc_stats(self.pid) if self.pid else {}),
             "sessions": h.get("sessions"), "activeSlots": h.get("activeSlots"),
             "pendingRequests": h.get("pendingRequests"), "status": h.get("status")}
        self.samples.append(s)
        print(json.dumps(s), file=sys.stderr, flush=True)
        return s

    async def sampler(self) -> None:
        k = 1
        while not self.done():
            wait = self.t0 + k * self.a.sample_every - time.perf_counter()
            if wait > 0:
                try:
                    await asyncio.sleep(min(wait, 1.0))
                except asyncio.CancelledError:
                    return
                continue
            await self.sample(f"+{k * self.a.sample_every:g} s")
            k += 1

    async def run(self) -> dict:
        await self.sample("start")
        sampler = asyncio.create_task(self.sampler())
        await asyncio.gather(*(self.worker(w) for w in range(self.a.workers)))
        wall = self.now()
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        # Let the server notice the last disconnects and go idle before the final sample.
        deadline = time.monotonic() + 60
        idle = False
        while time.monotonic() < deadline:
            h = await asyncio.to_thread(health, self.url) or {}
            if h.get("sessions") == 0 and h.get("activeSlots") == 0 and h.get("pendingRequests") == 0:
                idle = True
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        end = await self.sample("end")
        return self.report(wall, idle, end)

    def report(self, wall: float, idle: bool, end: dict) -> dict:
        a = self.a
        # One interval per periodic sample (from the previous one), the last up to the end of the load.
        periodic = [x["t"] for x in self.samples[1:-1]]
        edges = [0.0] + periodic + [wall]
        intervals = []
        for lo, hi in zip(edges, edges[1:], strict=False):
            vals = [ms for t, ms in self.first if lo <= t < hi]
            intervals.append({"fromS": round(lo, 1), "toS": round(hi, 1), "n": len(vals),
                              "firstAudioP50Ms": pct(vals, 50), "firstAudioP95Ms": pct(vals, 95),
                              "unexpected": sum(1 for u in self.unexpected_log if lo <= u["t"] < hi)})
        start = self.samples[0]
        base = self.samples[1] if len(self.samples) > 2 else start  # after the first interval's allocations

        def delta(key: str, ref: dict) -> float | None:
            return round(end[key] - ref[key], 1) if key in end and key in ref else None

        flat = {
            "rssMiBStartToEnd": delta("rssMiB", start), "rssMiBFirstSampleToEnd": delta("rssMiB", base),
            "fdsStartToEnd": delta("fds", start), "threadsStartToEnd": delta("threads", start),
            "mapsStartToEnd": delta("maps", start),
        }
        rss = [(s["t"], s["rssMiB"]) for s in self.samples[1:] if "rssMiB" in s]
        if len(rss) >= 3:
            slope = np.polyfit([t for t, _ in rss], [r for _, r in rss], 1)[0] * 60
            flat["rssMiBPerMinuteFit"] = round(float(slope), 2)
        flat["verdict"] = {
            "fdsFlat": flat["fdsStartToEnd"] is not None and abs(flat["fdsStartToEnd"]) <= 2,
            "rssFlat": flat["rssMiBFirstSampleToEnd"] is not None
            and flat["rssMiBFirstSampleToEnd"] <= max(20.0, 0.05 * base.get("rssMiB", 0)),
            "serverIdleAtEnd": idle and end.get("sessions") == 0,
            "definition": "fds flat: end within 2 of the start (idle server both times); RSS flat: end at most "
                          "max(20 MiB, 5 %) above the first periodic sample (the first interval includes "
                          "one-off allocations: buffers, caches, voice prompts)",
        }
        server = metrics_text(self.url)
        return {
            "serverMetrics": server, "serverAgrees": self.agrees(server),
            "config": {"workers": a.workers, "durationS": a.duration, "maxRequests": a.max_requests,
                       "seed": a.seed, "actions": ACTIONS, "framesPerRequest": [a.min_frames, a.max_frames],
                       "sampleEveryS": a.sample_every, "batchSlots": a.batch_slots if a.spawn else None,
                       "model": a.model or ("demo" if a.spawn else None), "dtype": a.dtype if a.spawn else None,
                       "host": platform.node(), "cpus": os.cpu_count(), "commit": self.commit, "tag": a.tag},
            "wallSeconds": round(wall, 1), "sessions": self.sessions, "requests": self.requests,
            "outcomes": self.outcomes, "provokedErrors": self.provoked,
            "provokedTotal": sum(self.provoked.values()),
            "unexpected": self.unexpected, "unexpectedTotal": sum(self.unexpected.values()),
            "unexpectedLog": self.unexpected_log,
            "firstAudioMs": summary([ms for _, ms in self.first]),
            "requestsWithUnderrun": self.underran,
            "intervals": intervals, "samples": self.samples, "flat": flat,
        }

    def agrees(self, server: dict) -> dict:
        """The client's counts against the server's /metrics counters (a fresh server: equal)."""
        o = self.outcomes
        mine = {"complete": sum(o.get(k, 0) for k in ("complete", "complete_queued", "complete_streamed",
                                                       "cancel_too_late", "disconnect_too_late")),
                "cancelled": o.get("cancelled", 0), "disconnected": o.get("disconnected", 0)}
        theirs = {k: server.get("requests", {}).get(f'interface="ws",outcome="{k}"', 0) for k in mine}
        codes: dict[str, int] = {}
        for key, n in self.provoked.items():
            code = key.split(" ")[0]
            codes[code] = codes.get(code, 0) + n
        server_codes = {lab.split('"')[1]: n for lab, n in server.get("errors", {}).items()}
        return {"client": {**mine, "errors": codes}, "server": {**theirs, "errors": server_codes},
                "outcomesEqual": mine == theirs,
                "errorsEqual": codes == server_codes if not self.unexpected else None}  # None: see unexpected


def table(r: dict) -> str:
    rows = ["| sample | t s | requests | RSS MiB | fds | threads | maps | sessions | first audio p50 / p95 ms "
            "(interval before) | unexpected |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, s in enumerate(r["samples"]):
        iv = r["intervals"][i - 1] if i else None
        fa = f"{iv['firstAudioP50Ms']} / {iv['firstAudioP95Ms']} (n={iv['n']})" if iv else ""
        rows.append(f"| {s['label']} | {s['t']} | {s['requests']} | {s.get('rssMiB')} | {s.get('fds')} | "
                    f"{s.get('threads')} | {s.get('maps')} | {s.get('sessions')} | {fa} | "
                    f"{iv['unexpected'] if iv else ''} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (default: spawn a demo server)")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, for RSS and fds")
    p.add_argument("--model", default=None, help="spawned server: checkpoint (default: demo)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-slots", type=int, default=16)
    p.add_argument("--voices-dir", type=Path, default=paths.cache_dir() / "benchmarks" / "voices")
    p.add_argument("--load-timeout", type=float, default=900)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--min-frames", type=int, default=10)
    p.add_argument("--max-frames", type=int, default=60, help="maxFrames is drawn from [min, max] per request")
    p.add_argument("--think", type=float, default=0.5, help="up to this many seconds between actions")
    p.add_argument("--io-timeout", type=float, default=120, help="longest wait for any one answer")
    p.add_argument("--sample-every", type=float, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="run")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    a.spawn = a.url is None
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    proc, pid, url = None, a.pid, a.url
    if a.spawn:
        a.clients, a.random_full_size, a.max_sessions = a.workers, False, max(64, 4 * a.workers)
        proc, url = spawn(a, log_name="soak-server.log.tmp")
        pid = proc.pid
    try:
        result = asyncio.run(Soak(a, url, pid).run())
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    if proc is not None:
        result["serverExitCode"] = proc.returncode
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = a.out or REPO / "benchmarks" / "results" / f"soak-{a.tag}-{stamp}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    brief = {k: v for k, v in result.items() if k not in ("samples", "intervals", "unexpectedLog")}
    print(json.dumps(brief, indent=1))
    print(table(result))
    print(f"results: {out}", file=sys.stderr)
    sys.exit(1 if result["unexpectedTotal"] else 0)


if __name__ == "__main__":
    main()
