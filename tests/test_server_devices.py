"""`--devices`: one engine per local device, requests on the least-loaded one.

A server process with two XLA host devices (`--xla_force_host_platform_device_count=2`) and the
real engine on a tiny checkpoint: each device's engine lives on its own device, both devices do
work under concurrent requests, and a request's audio does not depend on the device it ran on.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.server_harness import Client, arun

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from qwen3tts_jax import Qwen3TTS
from qwen3tts_jax.server.__main__ import run, setup_logging
from qwen3tts_jax.server.app import TTSServer
from qwen3tts_jax.server.backend import backend_for
from qwen3tts_jax.server.config import ServerConfig
setup_logging()

def loader(device):
    return backend_for(Qwen3TTS.from_pretrained(sys.argv[1]), 2, model_key="tiny")

cfg = ServerConfig(host="127.0.0.1", port=0, voices_dir=sys.argv[2], batch_slots=2, devices=2, warmup=False)
run(TTSServer(cfg, loader, "tiny"))
"""


def health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


@pytest.fixture()
def two_device_server(tmp_path, tiny_checkpoint):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tiny_checkpoint[1]), str(tmp_path / "voices")],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    port = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and port is None:
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith("{") and json.loads(line).get("event") == "listening":
            port = json.loads(line)["port"]
    while port is not None and time.monotonic() < deadline and health(port)["status"] != "ok":
        time.sleep(0.5)
    if port is None or health(port)["status"] != "ok":
        proc.kill()
        pytest.fail(f"the two-device server did not start: {proc.stderr.read()[-2000:]}")
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_every_device_serves_and_the_device_does_not_change_the_audio(two_device_server):
    port = two_device_server
    devices = health(port)["devices"]
    assert [d["device"] for d in devices] == [0, 1]
    placements = [d["placement"] for d in devices]  # each engine's arrays on its own device ("cpu:0", "cpu:1")
    assert all(placements) and placements[0][-1] == "0" and placements[1] == placements[0][:-1] + "1", placements

    async def one(seed: int) -> bytes:
        async with Client.open(f"ws://127.0.0.1:{port}/api/v1/speak") as c:
            await c.start(encoding="pcm32f", language="English")
            await c.send(type="speak", text="The same words on either device.", seed=seed, maxFrames=12)
            pcm, done, _ = await c.collect(timeout=240)  # the first request on a device compiles its steps
            assert done["type"] == "complete", done
            return pcm

    async def body():
        alone = await one(3)  # on an idle server: the first device
        together = await asyncio.gather(one(3), one(3))  # least-loaded placement: one on each device
        return alone, together

    alone, together = arun(body(), timeout=400)
    assert all(pcm == alone for pcm in together)  # each alone on its device: the same bytes
    steps = [d["steps"] for d in health(port)["devices"]]
    assert all(n > 0 for n in steps), steps  # both devices did work
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for device in ("0", "1"):
        assert f'qwen3tts_active_slots{{device="{device}"}}' in metrics
        assert f'qwen3tts_step_seconds_count{{device="{device}"}}' in metrics
