"""Continuous batching through the server: cancel, disconnect, priority, concurrency, slow clients."""

from __future__ import annotations

import asyncio
import socket
import time

from tests.fake_engine import FRAME, FakeTTS
from tests.server_harness import Client, arun, expected_pcm, running_server, url

STEP = 0.02


async def wait_until(pred, timeout: float = 5.0, every: float = 0.005) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        await asyncio.sleep(every)
    return time.monotonic() - t0


def test_cancel_mid_stream_then_speak_again(tmp_path):
    async def body():
        fake = FakeTTS(step_delay=STEP)
        async with running_server(tmp_path, fake, batch_slots=2) as srv, Client.open(srv) as c:
            await c.start(encoding="pcm32f")
            await c.send(type="speak", text="a long story", maxFrames=10_000, requestId="long")
            await c.send(type="speak", text="queued behind", requestId="behind")
            for _ in range(3):
                assert isinstance(await c.recv(), bytes)
            engine = fake.engines[0]
            steps_at_cancel = engine.steps
            await c.send(type="cancel")
            late = 0
            while True:  # frames already in flight may still arrive before the answer
                raw = await c.recv()
                if isinstance(raw, bytes):
                    late += 1
                    continue
                break
            import json
            finals = [json.loads(raw), await c.recv_json()]
            assert {m["requestId"] for m in finals} == {"long", "behind"}
            assert all(m["type"] == "complete" and m["cancelled"] is True for m in finals)
            long = next(m for m in finals if m["requestId"] == "long")
            assert long["samples"] == (3 + late) * FRAME
            assert late <= 2
            await wait_until(lambda: engine.active_slots() == [])
            assert engine.steps - steps_at_cancel <= 2  # freed within one step of the cancel
            # Nothing more of the cancelled request arrives; the next speak works and is exact.
            pcm, done = await c.speak("after cancel", maxFrames=3)
            assert done["type"] == "complete" and "cancelled" not in done
            assert pcm == expected_pcm(srv, "after cancel", max_new_frames=3)
    arun(body())


def test_disconnect_frees_slot(tmp_path):
    async def body():
        fake = FakeTTS(step_delay=STEP)
        async with running_server(tmp_path, fake, batch_slots=1) as srv:
            engine = fake.engines[0]
            async with Client.open(srv) as a:
                await a.send(type="speak", text="never heard", maxFrames=10_000)
                await a.recv()
                assert len(engine.active_slots()) == 1
            await wait_until(lambda: engine.active_slots() == [], timeout=2)
            async with Client.open(srv) as b:  # the only slot is free again
                pcm, done = await b.speak("my turn", maxFrames=2)
                assert done["type"] == "complete" and len(pcm) == 2 * FRAME * 2
            await wait_until(lambda: not srv.sessions, timeout=2)
    arun(body())


def test_high_priority_overtakes_queued_normal(tmp_path):
    async def body():
        fake = FakeTTS(step_delay=STEP)
        async with running_server(tmp_path, fake, batch_slots=1) as srv:
            engine = fake.engines[0]
            async with Client.open(srv) as a, Client.open(srv) as b, Client.open(srv) as h:
                await a.send(type="speak", text="occupies the slot", maxFrames=15)
                await a.recv()
                await b.send(type="speak", text="normal work", maxFrames=2)
                await asyncio.sleep(0.1)  # b is queued on the device
                await h.send(type="speak", text="urgent work", maxFrames=2, priority="high")
                results = await asyncio.gather(a.collect(), b.collect(), h.collect())
                assert all(r[1]["type"] == "complete" for r in results)
            order = [t for _, t in engine.admit_log if t != "Warm up."]
            assert order == ["occupies the slot", "urgent work", "normal work"]
    arun(body())


def test_high_priority_first_within_session(tmp_path):
    async def body():
        async with running_server(tmp_path, FakeTTS(step_delay=STEP), batch_slots=1) as srv, \
                Client.open(srv) as c:
            await c.send(type="speak", text="first", maxFrames=5, requestId="1")
            await c.send(type="speak", text="second", maxFrames=1, requestId="2")
            await c.send(type="speak", text="third", maxFrames=1, requestId="3", priority="high")
            ids = [(await c.collect())[1]["requestId"] for _ in range(3)]
            assert ids == ["1", "3", "2"]
    arun(body())


def test_sixteen_concurrent_sessions(tmp_path):
    async def body():
        fake = FakeTTS(step_delay=0.005)
        async with running_server(tmp_path, fake, batch_slots=8) as srv:
            async def one(i: int):
                async with Client.open(srv) as c:
                    await c.start(encoding="pcm32f")
                    text = f"session number {i} says hello"
                    results = []
                    for k in range(2):
                        pcm, done = await c.speak(text, seed=i * 10 + k, maxFrames=4 + i % 5)
                        assert done["type"] == "complete", done
                        results.append(pcm == expected_pcm(srv, text, seed=i * 10 + k,
                                                           max_new_frames=4 + i % 5))
                    return results
            t0 = time.monotonic()
            out = await asyncio.gather(*(one(i) for i in range(16)))
            assert all(all(r) for r in out)
            assert max(len(set(map(tuple, [r]))) for r in out) == 1
            # Batching really happened: far fewer steps than the sum of all frames.
            total_frames = sum(2 * (4 + i % 5) for i in range(16))
            assert fake.engines[0].steps < total_frames / 3
            assert time.monotonic() - t0 < 20
    arun(body())


def test_slow_client_is_disconnected(tmp_path):
    async def body():
        fake = FakeTTS(step_delay=0.001)
        async with running_server(tmp_path, fake, batch_slots=2, max_send_buffer_bytes=256 * 1024) as srv:
            engine = fake.engines[0]
            async with Client.open(srv) as reader:  # a client that reads gets everything
                await reader.start(encoding="pcm32f")
                pcm, done = await reader.speak("a lot of audio", maxFrames=300)
                assert done["type"] == "complete" and len(pcm) == 300 * FRAME * 4
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", srv.port))
            async with Client.open(url(srv), sock=sock) as lazy, Client.open(srv) as beside:
                await lazy.start(encoding="pcm32f")
                await beside.start(encoding="pcm32f")
                await lazy.send(type="speak", text="flood", maxFrames=5000)  # ~38 MB of audio
                lazy.ws.transport.pause_reading()  # and never read again
                # Meanwhile a client that reads is served in full, not held up by the one that does not.
                t0 = time.monotonic()
                pcm, done = await beside.speak("served beside it", maxFrames=200)
                assert done["type"] == "complete" and pcm == expected_pcm(srv, "served beside it", max_new_frames=200)
                assert time.monotonic() - t0 < 5
                waited = await wait_until(lambda: len(srv.sessions) == 1, timeout=10)
                await wait_until(lambda: engine.active_slots() == [], timeout=2)
                lazy.ws.transport.resume_reading()  # lets the client see the close quickly
                print(f"slow client dropped after {waited:.2f} s")
            async with Client.open(srv) as ok:  # everybody else is still served
                _, done = await ok.speak("fine", maxFrames=2)
                assert done["type"] == "complete"
    arun(body())


def test_event_loop_never_waits_on_the_device(tmp_path):
    """A slow device step (or prompt computation) does not delay other sessions' control traffic."""
    async def body():
        fake = FakeTTS(step_delay=0.3)
        async with running_server(tmp_path, fake, batch_slots=2) as srv:
            async with Client.open(srv) as busy:
                await busy.send(type="speak", text="slow device", maxFrames=3)
                await asyncio.sleep(0.1)  # a step is running now
                t0 = time.monotonic()
                async with Client.open(srv) as other:
                    await other.start(encoding="pcm32f", sampleRate=16000)
                    await other.send(type="speak", text="")
                    assert (await other.recv_json())["code"] == "INVALID_TEXT"
                assert time.monotonic() - t0 < 0.3
                _, done, _ = await busy.collect()
                assert done["type"] == "complete"
    arun(body())


def test_restart_applies_to_next_request_only(tmp_path):
    async def body():
        async with running_server(tmp_path, FakeTTS(step_delay=STEP)) as srv, Client.open(srv) as c:
            await c.start(encoding="pcm32f")
            await c.send(type="speak", text="first", maxFrames=4)
            await c.recv()
            await c.send(type="start", encoding="pcm16", sampleRate=16000)
            frames = []
            while True:  # `started` arrives in the middle of the first request's audio
                raw = await c.recv()
                if isinstance(raw, bytes):
                    frames.append(raw)
                    continue
                import json
                msg = json.loads(raw)
                if msg["type"] == "started":
                    assert msg["encoding"] == "pcm16" and msg["sampleRate"] == 16000
                    continue
                assert msg["type"] == "complete" and msg["sampleRate"] == 24000
                break
            pcm, done = await c.speak("second", maxFrames=3)
            assert done["sampleRate"] == 16000 and len(pcm) == 2 * done["samples"]
    arun(body())
