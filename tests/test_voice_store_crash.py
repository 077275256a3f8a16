"""A server process killed (SIGKILL) in the middle of `registerVoice` leaves no half-written voice.

The kill lands at the two worst moments: while the new voice's files are being written, and
between the two renames that swap an overwritten voice into place. After a restart the store
lists only whole voices; what the killed process left is cleaned up (or, for the swap, the old
voice put back) once it is old enough not to be another replica's registration in progress.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from qwen3tts_jax.server.voices import VoiceStore

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import asyncio, os, signal, sys
from pathlib import Path
import soundfile as sf
from qwen3tts_jax.server import voices as V
from tests.server_harness import Client, running_server
from tests.test_server_voices import wav_b64

root, mode = Path(sys.argv[1]), sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

async def main():
    async with running_server(root) as srv:
        async with Client.open(srv) as c:
            await c.send(type="registerVoice", voiceId="alice", audio=wav_b64(1.0), transcript="Hi.")
            assert (await c.recv_json())["type"] == "voiceRegistered"
            if mode == "write":
                def half(tmp, msg, wav, sr, language):
                    sf.write(tmp / "reference.wav", wav[: len(wav) // 2], sr)
                    die()
                V.VoiceStore._write = staticmethod(half)
                await c.send(type="registerVoice", voiceId="bob", audio=wav_b64(1.0, freq=330.0))
            else:
                renames, real = [], os.rename
                def rename(a, b):
                    renames.append(a)
                    if len(renames) == 2:  # the old voice is in the trash, the new one not yet in place
                        die()
                    real(a, b)
                V.os.rename = rename
                await c.send(type="registerVoice", voiceId="alice", audio=wav_b64(2.0, freq=330.0), overwrite=True)
            await c.recv_json(timeout=30)
    sys.exit("not killed")

asyncio.run(main())
"""


def killed_mid_registration(tmp_path: Path, mode: str) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), mode], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return tmp_path / "voices"


def age(path: Path, seconds: float = 3600) -> None:
    for p in path.glob(".*"):
        past = time.time() - seconds
        os.utime(p, (past, past))


def test_killed_while_writing_leaves_no_half_voice(tmp_path):
    root = killed_mid_registration(tmp_path, "write")
    assert list(root.glob(".tmp-bob-*"))  # the killed process's half-written folder
    store = VoiceStore(root)
    assert "bob" not in [v.id for v in store.list()]
    assert "alice" in [v.id for v in store.list()]
    with pytest.raises(Exception, match="bob"):
        store.get("bob")
    age(root)
    VoiceStore(root)  # a later start removes what is old enough to be nobody's work in progress
    assert not list(root.glob(".tmp-*"))


def test_killed_between_the_renames_of_an_overwrite_keeps_the_old_voice(tmp_path):
    root = killed_mid_registration(tmp_path, "swap")
    assert not (root / "alice").exists() and list(root.glob(".trash-alice-*"))
    assert "alice" not in [v.id for v in VoiceStore(root).list()]  # never a half voice, even now
    age(root)
    store = VoiceStore(root)
    alice = store.get("alice")
    assert sf.info(str(alice.reference)).duration == pytest.approx(1.0, abs=0.01)  # the old voice, whole
    assert alice.transcript == "Hi."
    assert not list(root.glob(".tmp-*")) and not list(root.glob(".trash-*"))
