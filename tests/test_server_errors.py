"""Every error code, each with its recoverable flag, and the server still serving afterwards."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request

import pytest
from qwen3tts_jax.server import protocol as P
from websockets.exceptions import ConnectionClosed

from tests.fake_engine import FakeTTS
from tests.server_harness import Client, arun, expected_pcm, fake_loader, running_server


async def expect_error(c: Client, code: str, request_id: str | None = None) -> dict:
    msg = await c.recv_json()
    assert msg["type"] == "error" and msg["code"] == code, msg
    assert msg["recoverable"] is P.ERROR_CODES[code]
    assert isinstance(msg["message"], str) and msg["message"]
    if request_id is not None:
        assert msg["requestId"] == request_id
    return msg


async def still_serves(srv, c: Client | None = None) -> None:
    async def check(cl):
        pcm, done = await cl.speak("still alive", maxFrames=2)
        assert done["type"] == "complete"
        assert pcm == expected_pcm(srv, "still alive", encoding="pcm16", max_new_frames=2)
    if c is not None:
        await check(c)
    async with Client.open(srv) as fresh:
        await check(fresh)


def test_bad_requests_keep_the_session(tmp_path):
    async def body():
        async with running_server(tmp_path, max_message_bytes=4096, max_text_chars=100) as srv, \
                Client.open(srv) as c:
            await c.ws.send("{not json")
            await expect_error(c, "BAD_REQUEST")
            await c.ws.send(b"\x00\xffjunk")
            await expect_error(c, "BAD_REQUEST")
            await c.ws.send("[1, 2]")
            await expect_error(c, "BAD_REQUEST")
            for msg in ({"type": "dance"}, {"text": "no type"}, {"type": 5},
                        {"type": "speak"}, {"type": "speak", "text": 123},
                        {"type": "speak", "text": "x", "priority": "urgent"},
                        {"type": "speak", "text": "x", "seed": "7"},
                        {"type": "speak", "text": "x", "maxFrames": True},
                        {"type": "start", "sampleRate": 12345},
                        {"type": "start", "sampleRate": "24000"},
                        {"type": "start", "encoding": "mp3"},
                        {"type": "start", "transport": "carrier-pigeon"},
                        {"type": "start", "language": "Klingon"},
                        {"type": "stop", "reason": 3}):
                await c.ws.send(json.dumps(msg))
                await expect_error(c, "BAD_REQUEST")
            await c.send(type="speak", text="x" * 5000, requestId="big")  # oversized frame
            await expect_error(c, "BAD_REQUEST")
            await c.send(type="speak", text="", requestId="e1")
            await expect_error(c, "INVALID_TEXT", "e1")
            await c.send(type="speak", text=" \n\t ", requestId="e2")
            await expect_error(c, "INVALID_TEXT", "e2")
            await c.send(type="speak", text="y" * 101, requestId="e3")
            await expect_error(c, "INVALID_TEXT", "e3")
            await c.send(type="start", voice="nobody")
            await expect_error(c, "VOICE_NOT_FOUND")
            for bad in ("../default", "default/../default", "/etc/passwd", ".", "..", "a" * 65):
                await c.send(type="start", voice=bad)
                await expect_error(c, "VOICE_NOT_FOUND")
            await c.send(type="cancel")  # idle cancel is ignored: the next frame is our speak's
            await still_serves(srv, c)
    arun(body())


def test_frame_over_hard_limit_closes(tmp_path):
    async def body():
        async with running_server(tmp_path, max_voice_message_bytes=100_000) as srv:
            async with Client.open(srv) as c:
                await c.send(type="registerVoice", voiceId="x", audio="A" * 200_000)
                with pytest.raises(ConnectionClosed):
                    await c.recv_json()
                assert c.ws.close_code == 1009
            await still_serves(srv)
    arun(body())


def test_synthesis_error_and_timeout(tmp_path):
    async def body():
        fake = FakeTTS(step_delay=0.01)
        async with running_server(tmp_path, fake, request_timeout_s=0.3) as srv, Client.open(srv) as c:
            await c.send(type="speak", text="please __explode__", requestId="boom")
            await expect_error(c, "SYNTHESIS_ERROR", "boom")
            await c.send(type="speak", text="a very long one", maxFrames=10_000, requestId="slow")
            _, msg, _ = await c.collect()
            assert msg["type"] == "error" and msg["code"] == "TIMEOUT" and msg["recoverable"] is True
            await asyncio.sleep(0.05)
            assert fake.engines[0].active_slots() == []  # the timed-out request left the device
            await still_serves(srv, c)
    arun(body())


def test_model_loading_then_ready(tmp_path):
    async def body():
        gate = threading.Event()
        fake = FakeTTS()
        inner = fake_loader(fake, 2)

        def slow_loader():
            gate.wait(10)
            return inner()

        async with _slow_server(tmp_path, fake, slow_loader) as srv:
            async with Client.open(srv) as c:
                assert c.ready["modelReady"] is False
                await c.send(type="speak", text="too early", requestId="m")
                await expect_error(c, "MODEL_LOADING", "m")
                status = await asyncio.to_thread(_status, srv, P.HEALTH_PATH)
                assert status == 503
                gate.set()
                assert await srv.worker.loaded
                pcm, done = await c.speak("now", maxFrames=2)
                assert done["type"] == "complete" and pcm
                assert await asyncio.to_thread(_status, srv, P.HEALTH_PATH) == 200
    arun(body())


def test_model_load_failure_is_reported(tmp_path):
    async def body():
        def broken():
            raise RuntimeError("no weights here")

        async with _slow_server(tmp_path, FakeTTS(), broken) as srv:
            assert await srv.worker.loaded is False
            async with Client.open(srv) as c:
                await c.send(type="speak", text="hello")
                msg = await expect_error(c, "SYNTHESIS_ERROR")
                assert "no weights here" in msg["message"]
    arun(body())


def _status(srv, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _slow_server(tmp_path, fake, loader):
    """A server whose model is not loaded when it starts listening."""
    import contextlib

    from qwen3tts_jax.server.app import TTSServer
    from qwen3tts_jax.server.config import ServerConfig

    @contextlib.asynccontextmanager
    async def ctx():
        cfg = ServerConfig(host="127.0.0.1", port=0, voices_dir=tmp_path / "voices", batch_slots=2)
        srv = TTSServer(cfg, loader, model_name="slow")
        srv.fake = fake
        await srv.start()
        try:
            yield srv
        finally:
            await srv.shutdown()
    return ctx()


def test_rate_limits(tmp_path):
    async def body():
        fake = FakeTTS(step_delay=0.01)
        async with running_server(tmp_path, fake, max_sessions=2, max_queued_per_session=2) as srv:
            async with Client.open(srv) as a, Client.open(srv):
                async with Client.open(srv) as third:
                    msg = third.ready
                    assert msg["type"] == "error" and msg["code"] == "RATE_LIMITED"
                    assert msg["recoverable"] is True
                    with pytest.raises(ConnectionClosed):
                        await third.recv()
                    assert third.ws.close_code == 1013
                # One running + two queued; the fourth is refused.
                for i in range(4):
                    await a.send(type="speak", text=f"queued {i}", maxFrames=20, requestId=f"q{i}")
                done, errors = [], []
                while len(done) < 3:
                    _, msg, _ = await a.collect()
                    (done if msg["type"] == "complete" else errors).append(msg)
                assert [m["requestId"] for m in done] == ["q0", "q1", "q2"]
                assert [(m["code"], m["requestId"], m["recoverable"]) for m in errors] == [
                    ("RATE_LIMITED", "q3", True)]
            await still_serves(srv)
    arun(body())


def test_auth(tmp_path):
    async def body():
        async with running_server(tmp_path, auth_token="s3cret") as srv:
            async with Client.open(srv) as c:  # speak without start
                assert c.ready["authRequired"] is True
                await c.send(type="speak", text="hi")
                await expect_error(c, "UNAUTHORIZED")
                with pytest.raises(ConnectionClosed):
                    await c.recv()
                assert c.ws.close_code == 1008
            async with Client.open(srv) as c:  # wrong token
                await c.send(type="start", authToken="s3cre")
                await expect_error(c, "UNAUTHORIZED")
            async with Client.open(srv) as c:  # token of the wrong type
                await c.send(type="start", authToken=123)
                await expect_error(c, "UNAUTHORIZED")
            async with Client.open(srv) as c:
                await c.start(authToken="s3cret")
                pcm, done = await c.speak("authorized", maxFrames=2)
                assert done["type"] == "complete" and pcm
            async with Client.open(srv, additional_headers={"Authorization": "Bearer s3cret"}) as c:
                assert c.ready["authRequired"] is False
                _, done = await c.speak("header auth", maxFrames=2)
                assert done["type"] == "complete"
            assert await asyncio.to_thread(_status, srv, P.VOICES_PATH) == 401
            assert await asyncio.to_thread(_status, srv, P.HEALTH_PATH) == 200
    arun(body())


def test_shutdown_cancels_running_requests(tmp_path):
    async def body():
        fake = FakeTTS(step_delay=0.01)
        async with running_server(tmp_path, fake, shutdown_grace_s=0.3) as srv:
            async with Client.open(srv) as c:
                await c.send(type="speak", text="endless", maxFrames=100_000, requestId="long")
                await c.send(type="speak", text="queued", requestId="queued")
                await c.recv()  # audio is flowing
                shutdown = asyncio.create_task(srv.shutdown())
                _, msg, _ = await c.collect()
                codes = {}
                while msg["type"] == "error":
                    codes[msg["requestId"]] = msg["code"]
                    if len(codes) == 2:
                        break
                    _, msg, _ = await c.collect()
                assert codes == {"long": "CANCELLED", "queued": "CANCELLED"}
                assert await c.recv_json() == {"type": "stopped", "reason": "server shutdown"}
                with pytest.raises(ConnectionClosed):
                    await c.recv()
                assert c.ws.close_code == 1001
                await shutdown
                assert fake.engines[0].active_slots() == []
    arun(body())


def test_text_that_is_not_unicode_is_invalid_text(tmp_path):
    """JSON can carry a lone surrogate ("\\ud800"), which no tokenizer can take: INVALID_TEXT
    with the request id, for speak text and a voice transcript, and the session keeps serving."""
    from tests.test_server_voices import wav_b64

    async def body():
        async with running_server(tmp_path) as srv, Client.open(srv) as c:
            await c.ws.send(json.dumps({"type": "speak", "text": "Hi \ud800 there", "requestId": "s1"}))
            await expect_error(c, "INVALID_TEXT", "s1")
            await c.ws.send(json.dumps({"type": "registerVoice", "voiceId": "eve", "audio": wav_b64(),
                                        "transcript": "\udfff"}))
            await expect_error(c, "INVALID_TEXT")
            await c.ws.send(json.dumps({"type": "start", "voice": "x\ud800"}))
            await expect_error(c, "BAD_REQUEST")
            await still_serves(srv, c)
    arun(body())


def test_a_second_stop_gets_no_second_stopped(tmp_path):
    async def body():
        async with running_server(tmp_path) as srv, Client.open(srv) as c:
            await c.send(type="stop", reason="one")
            await c.send(type="stop", reason="two")
            await c.send(type="speak", text="after the stop")
            got = []
            with pytest.raises(ConnectionClosed):
                while True:
                    got.append(await c.recv_json())
            assert got == [{"type": "stopped", "reason": "one"}]
            await still_serves(srv)
    arun(body())


def test_instruct_on_a_base_model_is_a_bad_request(tmp_path):
    async def body():
        async with running_server(tmp_path) as srv, Client.open(srv) as c:
            assert c.ready["capabilities"]["modelType"] == "base" and c.ready["capabilities"]["registerVoice"]
            await c.send(type="start", instruct="Be happy.")
            await expect_error(c, "BAD_REQUEST")
            await c.send(type="speak", text="Hi.", instruct="Be happy.", requestId="i1")
            await expect_error(c, "BAD_REQUEST", "i1")
            await c.send(type="speak", text="Hi.", instruct="x" * 5000, requestId="i2")
            await expect_error(c, "INVALID_TEXT", "i2")
            await still_serves(srv, c)
    arun(body())


def test_a_step_failing_for_one_request_ends_only_that_one(tmp_path):
    """The device step fails because of one row (engine.SlotError): that request ends with
    SYNTHESIS_ERROR mid-stream; the request beside it in the batch finishes with every sample,
    and the worker goes on serving."""
    async def body():
        async with running_server(tmp_path, FakeTTS(step_delay=0.005), batch_slots=2) as srv:
            async with Client.open(srv) as a, Client.open(srv) as b:
                await a.start(encoding="pcm32f")
                await b.start(encoding="pcm32f")
                await a.send(type="speak", text="an innocent neighbour", maxFrames=40, requestId="ok")
                await b.send(type="speak", text="a __poison__ request", maxFrames=40, requestId="bad")
                bad_pcm, bad, _ = await b.collect()
                ok_pcm, ok, _ = await a.collect()
            assert (bad["type"], bad["code"], bad["requestId"]) == ("error", "SYNTHESIS_ERROR", "bad")
            assert 0 < len(bad_pcm) < 40 * 1920 * 4  # it failed mid-stream, after some audio
            assert ok["type"] == "complete" and ok_pcm == expected_pcm(srv, "an innocent neighbour", max_new_frames=40)
            await still_serves(srv)
    arun(body())
