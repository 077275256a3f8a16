"""Replicas behind a real balancer: deploy/nginx.conf (Debian's nginx) in front of server processes.

Two fake-engine replicas serve both protocols; a third one whose model never finishes loading
sits in the HTTP upstream only. The conf is the canonical file with its `# replica` lines and
its `listen` line rewritten (render_conf).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from qwen3tts_jax.server import protocol as P
from qwen3tts_jax.server.voices import VoiceStore
from websockets.exceptions import ConnectionClosed

from tests.fake_engine import FRAME, FakeTTS, FakeVoicePrompt
from tests.server_harness import Client, arun

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "deploy" / "nginx.conf"
STEP_DELAY = 0.02  # seconds of fake device time per frame: FRAMES frames last about 2 s
FRAMES = 100
GRACE = 6.0  # the drained replica's --shutdown-grace: the short streams finish, the long one is cancelled
TEXT = "Two replicas, one balancer."

SCRIPT = """
import asyncio, sys, time
from qwen3tts_jax.server.__main__ import serve_forever, setup_logging
from qwen3tts_jax.server.app import TTSServer
from qwen3tts_jax.server.config import ServerConfig
from tests.fake_engine import FakeTTS
from tests.server_harness import fake_loader
voices, grace, step, load_delay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
load = fake_loader(FakeTTS(step_delay=step), 4)
def loader():
    time.sleep(load_delay)
    return load()
setup_logging()
cfg = ServerConfig(host="127.0.0.1", port=0, http_port=0, voices_dir=voices, batch_slots=4,
                   shutdown_grace_s=grace)
asyncio.run(serve_forever(TTSServer(cfg, loader, "fake")))
"""


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen
    log: Path
    port: int = 0
    http_port: int = 0

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def health(self) -> tuple[int | None, dict]:
        """GET /healthz on the WebSocket port: (status, body), (None, {}) when refused."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        except OSError:
            return None, {}


def launch(tmp: Path, name: str, grace: float = GRACE, load_delay: float = 0.0) -> Replica:
    log = tmp / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    with log.open("w") as out:  # a file, not a pipe: nobody has to keep reading it
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp / name / "voices"), str(grace),
                                 str(STEP_DELAY), str(load_delay)], cwd=REPO, env=env, stderr=out)
    return Replica(name, proc, log)


def wait_started(r: Replica, ready: bool, timeout: float = 40.0) -> None:
    """Until the replica listens on both ports (and, if `ready`, has loaded and warmed up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = {e.get("event"): e for e in r.events()}
        if "listening" in seen and "http_listening" in seen and (not ready or "warmup_done" in seen):
            r.port, r.http_port = seen["listening"]["port"], seen["http_listening"]["port"]
            return
        if r.proc.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"replica {r.name} did not start:\n{r.log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def render_conf(text: str, upstreams: dict[str, list[int]], listen: int) -> str:
    """The canonical conf with each upstream's `# replica` lines replaced by one per port."""
    out, current, done = [], None, set()
    for line in text.splitlines():
        m = re.match(r"\s*upstream (\w+) \{", line)
        if m:
            current = m.group(1)
        r = re.match(r"(\s*server )127\.0\.0\.1:\d+( .*;)\s*# replica$", line)
        if r:
            if current not in done:
                out += [f"{r.group(1)}127.0.0.1:{p}{r.group(2)}" for p in upstreams[current]]
                done.add(current)
            continue
        if re.fullmatch(r"\s*listen 8080;", line):
            line = f"        listen 127.0.0.1:{listen};"
            done.add("listen")
        out.append(line)
    assert done == {*upstreams, "listen"}, f"deploy/nginx.conf lacks replica or listen lines: {done}"
    return "\n".join(out) + "\n"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found is None:
        pytest.fail("nginx is not installed: `make .venv/.test` installs Debian's nginx")
    return found


@dataclass
class Cluster:
    a: Replica
    b: Replica
    loading: Replica
    port: int  # nginx
    prefix: Path

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}{P.SPEAK_PATH}"

    def access_log(self) -> str:
        return (self.prefix / "access.log").read_text()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nginx = nginx_binary()
    tmp = tmp_path_factory.mktemp("balancer")
    replicas = [launch(tmp, "a"), launch(tmp, "b"), launch(tmp, "loading", load_delay=600)]
    proc = None
    try:
        for r in replicas:
            wait_started(r, ready=r.name != "loading")
        a, b, loading = replicas
        prefix = tmp / "nginx"
        prefix.mkdir()
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(render_conf(CONF.read_text(), {
            "qwen3tts_ws": [a.port, b.port],
            "qwen3tts_http": [a.http_port, b.http_port, loading.http_port]}, port))
        cmd = [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf),
               "-g", f"daemon off; pid {prefix / 'nginx.pid'};"]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen(cmd)
        deadline = time.monotonic() + 10
        while refused(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not start:\n{(prefix / 'error.log').read_text()}")
            time.sleep(0.05)
        yield Cluster(a, b, loading, port, prefix)
    finally:
        if proc is not None:
            stop(proc)
        for r in replicas:
            stop(r.proc, signal.SIGKILL if r.name == "loading" else signal.SIGTERM)


def expected_pcm16(tmp: Path, text: str, frames: int | None) -> bytes:
    """The fake's audio for `text` in the default voice, computed here, not by a server."""
    store = VoiceStore(tmp / "voices")
    voice = store.get(store.default_id())
    fake = FakeTTS()
    wav, _ = fake.synthesize(text, voice=FakeVoicePrompt.from_key(fake, voice.reference, voice.transcript),
                             max_new_frames=frames)
    return P.encode_pcm(wav, "pcm16")


def test_http_api_streams_through_nginx(cluster, tmp_path):
    """POST /v1/audio/speech through nginx: the same bytes as from a replica, streamed (the
    first audio long before the last), and a replica still loading (503) is passed over."""
    text = "Streamed through the balancer, chunk by chunk."
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm", "max_frames": 50}

    async def post(base: str) -> tuple[bytes, float, float, dict]:
        t0 = time.monotonic()
        first = None
        parts = []
        async with aiohttp.ClientSession() as s, s.post(f"{base}/v1/audio/speech", json=body) as resp:
            assert resp.status == 200, await resp.text()
            async for part in resp.content.iter_any():
                first = first or time.monotonic() - t0
                parts.append(part)
            return b"".join(parts), first, time.monotonic() - t0, dict(resp.headers)

    async def body_():
        direct, *_ = await post(f"http://127.0.0.1:{cluster.a.http_port}")
        assert direct == expected_pcm16(tmp_path, text, 50)
        for _ in range(6):  # until nginx has tried the loading replica once
            pcm, first, total, headers = await post(f"http://127.0.0.1:{cluster.port}")
            assert pcm == direct
            assert headers.get("Transfer-Encoding") == "chunked" and headers.get("X-Sample-Rate") == "24000"
            assert first < total / 3, (first, total)  # passed on as it comes, not buffered whole
            if any(e.get("code") == "MODEL_LOADING" for e in cluster.loading.events()):
                break
        else:
            pytest.fail("nginx never tried the loading replica")

    arun(body_(), timeout=40)
    assert re.search(r"upstream_status=503, 200", cluster.access_log()), cluster.access_log()


def test_sessions_spread_then_one_replica_drains(cluster, tmp_path):
    """Six sessions spread over both replicas; SIGTERM one mid-stream. Its streams finish or end
    with CANCELLED, then `stopped` and close 1001; new sessions go to the other replica; the other
    replica's streams lose nothing; the drained replica exits 0."""
    a, b = cluster.a, cluster.b
    want = expected_pcm16(tmp_path, TEXT, FRAMES)

    def replica_of(session_id: str) -> Replica:
        for r in (a, b):
            if any(e.get("event") == "session_open" and e.get("session") == session_id for e in r.events()):
                return r
        raise AssertionError(f"session {session_id} is in no replica's log")

    async def body():
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(Client.open(cluster.ws)) for _ in range(6)]
            where = [replica_of(c.ready["sessionId"]) for c in clients]
            assert where.count(a) == 3 and where.count(b) == 3, [r.name for r in where]  # least_conn
            assert a.health()[1]["sessions"] == 3 and b.health()[1]["sessions"] == 3
            on_a = [c for c, r in zip(clients, where, strict=True) if r is a]
            long_one = on_a[0]  # outlives the grace period
            for c in clients:
                await c.send(type="speak", text=TEXT, encoding="pcm16", requestId="r",
                             maxFrames=100_000 if c is long_one else FRAMES)
            heads = [await c.recv() for c in clients]  # every stream is under way
            assert all(isinstance(h, bytes) for h in heads)

            a.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not (refused(a.port) and refused(a.http_port)):  # its listeners close first
                assert time.monotonic() < deadline, "the drained replica still accepts connections"
                await asyncio.sleep(0.05)
            assert a.health() == (None, {})
            with urllib.request.urlopen(f"http://127.0.0.1:{cluster.port}/healthz", timeout=5) as resp:
                assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"  # nginx asks b

            async def finish(c: Client, head: bytes):
                pcm, msg, _ = await c.collect(timeout=GRACE + 10)
                return head + pcm, msg

            async def new_session():
                async with Client.open(cluster.ws) as c:
                    assert replica_of(c.ready["sessionId"]) is b
                    return await c.speak(TEXT, encoding="pcm16", maxFrames=FRAMES)

            results = await asyncio.gather(*(finish(c, h) for c, h in zip(clients, heads, strict=True)),
                                           new_session(), new_session())
            for c, r, (pcm, msg) in zip(clients, where, results[:6], strict=True):
                if c is long_one:
                    assert msg["type"] == "error" and msg["code"] == "CANCELLED", msg
                else:  # finished within the grace period, or on the replica that stays: every byte
                    assert msg["type"] == "complete" and msg["samples"] == FRAMES * FRAME, msg
                    assert pcm == want
                if r is a:  # then the drained replica says goodbye and closes
                    assert await c.recv_json() == {"type": "stopped", "reason": "server shutdown"}
                    with pytest.raises(ConnectionClosed):
                        await c.recv()
                    assert c.ws.close_code == 1001
            for pcm, msg in results[6:]:
                assert msg["type"] == "complete" and pcm == want
            assert b.health()[0] == 200

    arun(body(), timeout=40)
    assert a.proc.wait(timeout=15) == 0
    assert any(e.get("event") == "shutdown_done" for e in a.events())


def test_deploy_manifests_agree():
    """deploy/k8s parses and keeps its promises; the Dockerfile copies every installed folder."""
    import tomllib

    import yaml

    docs = {d["kind"]: d for f in ("deployment.yaml", "service.yaml")
            for d in yaml.safe_load_all((REPO / "deploy" / "k8s" / f).read_text())}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    grace = float(args[args.index("--shutdown-grace") + 1])
    pre_stop = float(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace + 5
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == P.HEALTH_PATH
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a cold model load
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"ws": 8765, "http": 8000}
    svc = docs["Service"]["spec"]
    assert svc["sessionAffinity"] == "None"
    assert {p["targetPort"] for p in svc["ports"]} == set(ports)
    assert svc["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]

    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in {d.split("/")[0] for d in package_dirs.values()}:
        assert re.search(rf"^COPY {folder} {folder}$", dockerfile, re.M), f"deploy/Dockerfile does not copy {folder}/"
    assert 'ENTRYPOINT ["qwen3tts-server", "--host", "0.0.0.0"]' in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile and "/healthz" in dockerfile
