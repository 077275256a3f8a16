"""SIGTERM: the server process finishes or cancels running requests, says `stopped`, and exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server_harness import Client, arun

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import asyncio, sys
from qwen3tts_jax.server.__main__ import serve_forever, setup_logging
from qwen3tts_jax.server.app import TTSServer
from qwen3tts_jax.server.config import ServerConfig
from tests.fake_engine import FakeTTS
from tests.server_harness import fake_loader
setup_logging()
cfg = ServerConfig(host="127.0.0.1", port=0, voices_dir=sys.argv[1], batch_slots=2,
                   shutdown_grace_s=float(sys.argv[2]))
asyncio.run(serve_forever(TTSServer(cfg, fake_loader(FakeTTS(step_delay=0.01), 2), "fake")))
"""


def start_server(tmp_path: Path, grace: float) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "voices"), str(grace)],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    port = None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        event = json.loads(line)
        if event.get("event") == "listening":
            port = event["port"]
        if event.get("event") == "warmup_done":  # the model is loaded and serving
            return proc, port
    proc.kill()
    pytest.fail("server did not start")


@pytest.mark.parametrize("grace,expect", [(5.0, "complete"), (0.3, "CANCELLED")])
def test_sigterm(tmp_path, grace, expect):
    proc, port = start_server(tmp_path, grace)
    try:
        async def body():
            async with Client.open(f"ws://127.0.0.1:{port}/api/v1/speak") as c:
                frames = 30 if expect == "complete" else 100_000
                await c.send(type="speak", text="shutting down", maxFrames=frames, requestId="r")
                assert isinstance(await c.recv(), bytes)
                proc.send_signal(signal.SIGTERM)
                _, msg, _ = await c.collect()
                if expect == "complete":
                    assert msg["type"] == "complete" and msg["samples"] == 30 * 1920
                else:
                    assert msg["type"] == "error" and msg["code"] == "CANCELLED"
                assert await c.recv_json() == {"type": "stopped", "reason": "server shutdown"}
                await c.ws.wait_closed()
                assert c.ws.close_code == 1001
        arun(body(), timeout=30)
        assert proc.wait(timeout=15) == 0
        log = proc.stderr.read()
        assert '"event": "shutdown_done"' in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
