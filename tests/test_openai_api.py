"""The OpenAI-compatible HTTP API, driven by the official `openai` SDK on loopback.

The server is real (aiohttp beside websockets in one loop, the real device worker); the model is
the deterministic fake, so every byte can be compared with what the WebSocket port sends for the
same text, voice and seed.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import aiohttp
import av
import numpy as np
import openai
import pytest
import soundfile as sf
from qwen3tts_jax.server import protocol as P

from tests.fake_engine import FRAME, FakeTTS
from tests.server_harness import Client, arun, expected_pcm, http_url, running_server


def sdk(srv, api_key: str = "x") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=http_url(srv), api_key=api_key, max_retries=0)


async def streamed(client: openai.AsyncOpenAI, chunk: int = 3840, **kw) -> tuple[bytes, object]:
    async with client.audio.speech.with_streaming_response.create(model="qwen3-tts", **kw) as r:
        data = b"".join([c async for c in r.iter_bytes(chunk)])
        return data, r


def decoded_samples(data: bytes) -> tuple[int, int]:
    """(samples, rate) of an encoded stream, decoded by FFmpeg (PyAV), as players do."""
    with av.open(io.BytesIO(data)) as c:
        n, rate = 0, None
        for frame in c.decode(audio=0):
            n += frame.samples
            rate = frame.sample_rate
    return n, rate


def test_streamed_pcm_equals_the_websocket_pcm16(tmp_path):
    text = "The same words through either door."

    async def body():
        async with running_server(tmp_path) as srv:
            pcm, r = await streamed(sdk(srv), voice="default", input=text, response_format="pcm",
                                    extra_body={"language": "English", "seed": 7})
            assert r.headers["content-type"] == "audio/pcm"
            assert r.headers["x-sample-rate"] == "24000"
            assert r.headers["transfer-encoding"] == "chunked"
            assert r.headers["x-request-id"]
            async with Client.open(srv) as c:
                await c.start(encoding="pcm16", voice="default", language="English", seed=7)
                ws_pcm, done = await c.speak(text)
            assert done["type"] == "complete"
            assert pcm == ws_pcm
            assert pcm == expected_pcm(srv, text, encoding="pcm16", seed=7, language="English")
    arun(body())


def test_formats_decode_to_the_same_length(tmp_path):
    text = "Four formats, one length."

    async def body():
        async with running_server(tmp_path) as srv:
            client = sdk(srv)
            n = len(expected_pcm(srv, text, encoding="pcm16", language="auto")) // 2
            got = {}
            for fmt, ctype in [("wav", "audio/wav"), ("mp3", "audio/mpeg"), ("flac", "audio/flac"),
                               ("opus", "audio/opus"), ("aac", "audio/aac")]:
                data, r = await streamed(client, voice="alloy", input=text, response_format=fmt)
                assert r.headers["content-type"] == ctype, fmt
                got[fmt] = decoded_samples(data), data
            wav = got["wav"][1]
            assert wav[:4] == b"RIFF" and wav[4:8] == b"\xff\xff\xff\xff" and wav[40:44] == b"\xff\xff\xff\xff"
            assert np.array_equal(np.frombuffer(wav[44:], "<i2"),
                                  np.frombuffer(expected_pcm(srv, text, encoding="pcm16", language="auto"), "<i2"))
            assert got["wav"][0] == (n, 24000)
            assert got["flac"][0] == (n, 24000)
            mp3 = got["mp3"][1]
            assert mp3[:2] == b"\xff\xf3"  # an MPEG-2 Layer III frame sync: 24 kHz mp3
            assert got["mp3"][0][1] == 24000 and n <= got["mp3"][0][0] <= n + 2 * 1152
            assert got["aac"][0][1] == 24000 and n <= got["aac"][0][0] <= n + 2 * 1024
            samples, rate = got["opus"][0]  # Opus decodes at 48 kHz
            assert rate == 48000 and abs(samples - 2 * n) <= 2 * 960
            # The SDK without a response_format gets OpenAI's default, mp3 (Open WebUI and LibreChat rely on it).
            audio = await client.audio.speech.create(model="tts-1", voice="alloy", input=text)
            assert audio.content[:2] == b"\xff\xf3"
            assert decoded_samples(audio.content)[0] == got["mp3"][0][0]
    arun(body())


def test_sse_events(tmp_path):
    text = "Events, then done."

    async def body():
        async with running_server(tmp_path) as srv:
            async with sdk(srv).audio.speech.with_streaming_response.create(
                    model="gpt-4o-mini-tts", voice="default", input=text, response_format="pcm",
                    extra_body={"stream_format": "sse", "language": "English"}) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                events = [json.loads(line[5:]) async for line in r.iter_lines() if line.startswith("data:")]
            assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
            assert len(events) > 2 and events[-1]["type"] == "speech.audio.done" and "usage" in events[-1]
            pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
            assert pcm == expected_pcm(srv, text, encoding="pcm16", language="English")
    arun(body())


def test_extra_body_fields_reach_the_request(tmp_path):
    async def body():
        async with running_server(tmp_path) as srv:
            client = sdk(srv)
            base, _ = await streamed(client, voice="default", input="Seeded.", response_format="pcm")
            other, _ = await streamed(client, voice="default", input="Seeded.", response_format="pcm",
                                      extra_body={"seed": 12345})
            assert base != other and len(base) == len(other)
            assert other == expected_pcm(srv, "Seeded.", encoding="pcm16", seed=12345, language="auto")
            for key in ("max_frames", "maxFrames"):  # snake_case (Python habits) and camelCase (the WS names)
                short, _ = await streamed(client, voice="default", input="A long text " * 10, response_format="pcm",
                                          extra_body={key: 2, "top_k": 5, "topP": 0.9, "unknown_field": 1})
                assert len(short) == 2 * 2 * FRAME
            # Instructions are ignored by a Base model (as OpenAI ignores them for tts-1), not refused.
            same, _ = await streamed(client, voice="default", input="Seeded.", response_format="pcm",
                                     instructions="Speak slowly.")
            assert same == base
            # The voice as an object, as vLLM-Omni normalizes it.
            obj, _ = await streamed(client, voice={"id": "default"}, input="Seeded.", response_format="pcm")
            assert obj == base
    arun(body())


def test_errors_have_openai_shape_and_status(tmp_path):
    async def body():
        async with running_server(tmp_path, max_text_chars=50) as srv:
            client = sdk(srv)
            with pytest.raises(openai.BadRequestError) as e:
                await client.audio.speech.create(model="m", voice="default", input="   ")
            assert e.value.param == "input" and e.value.code == "invalid_text"
            assert e.value.body["type"] == "invalid_request_error"
            with pytest.raises(openai.BadRequestError) as e:
                await client.audio.speech.create(model="m", voice="default", input="x" * 51)
            assert e.value.param == "input"
            with pytest.raises(openai.BadRequestError) as e:
                await client.audio.speech.create(model="m", voice="nobody-here", input="Hi.")
            assert e.value.param == "voice" and e.value.code == "voice_not_found"
            with pytest.raises(openai.BadRequestError) as e:
                await client.audio.speech.create(model="m", voice="default", input="Hi.", speed=1.5)
            assert e.value.param == "speed"
            assert (await client.audio.speech.create(model="m", voice="default", input="Hi.", speed=1.0,
                                                     response_format="wav")).content[:4] == b"RIFF"
            with pytest.raises(openai.BadRequestError) as e:
                await client.audio.speech.create(model="m", voice="default", input="Hi.",
                                                 response_format="ogg")  # type: ignore[arg-type]
            assert e.value.param == "response_format"
            with pytest.raises(openai.BadRequestError) as e:
                await client.audio.speech.create(model="m", voice="default", input="Hi.",
                                                 extra_body={"temperature": "hot"})
            assert "temperature" in e.value.message and e.value.param == "temperature"
            for extra, param in (({"seed": "x"}, "seed"), ({"max_frames": 0}, "max_frames"),
                                 ({"maxFrames": 0}, "maxFrames"), ({"language": "Klingon"}, "language")):
                with pytest.raises(openai.BadRequestError) as e:  # `param` as the client spelled it
                    await client.audio.speech.create(model="m", voice="default", input="Hi.", extra_body=extra)
                assert e.value.param == param, extra
            with pytest.raises(openai.InternalServerError) as e:  # the fake's device fails on this text
                await client.audio.speech.create(model="m", voice="default", input="__explode__")
            assert e.value.response.headers["x-should-retry"] == "false"
            # Raw HTTP: a body that is not JSON; an input with JSON's "\ud800" (a lone surrogate, not text).
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{http_url(srv)}/audio/speech", data=b"{nope") as r:
                    assert r.status == 400
                    assert (await r.json())["error"]["type"] == "invalid_request_error"
                async with s.post(f"{http_url(srv)}/audio/speech",
                                  data=b'{"model": "m", "voice": "default", "input": "ab\\ud800"}') as r:
                    assert r.status == 400
                    error = (await r.json())["error"]
                    assert (error["param"], error["code"]) == ("input", "invalid_text")
                    assert "lone surrogate" in error["message"]
            # The error counts reach /metrics.
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{http_url(srv)[:-3]}/metrics") as r:
                    text = await r.text()
            assert 'qwen3tts_errors_total{code="INVALID_TEXT",interface="http"} 3.0' in text
            assert 'qwen3tts_requests_total{interface="http",outcome="complete"} 1.0' in text
    arun(body())


def test_auth_and_listings(tmp_path):
    async def body():
        async with running_server(tmp_path, auth_token="s3cret") as srv:
            with pytest.raises(openai.AuthenticationError) as e:
                await sdk(srv, "wrong").audio.speech.create(model="m", voice="default", input="Hi.")
            assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                await sdk(srv, "wrong").models.list()
            good = sdk(srv, "s3cret")
            pcm = (await good.audio.speech.create(model="m", voice="default", input="Hi.",
                                                  response_format="pcm")).content
            assert len(pcm) == len(expected_pcm(srv, "Hi.", encoding="pcm16", language="auto"))
            models = await good.models.list()
            assert [m.id for m in models.data] == ["qwen3-tts"]
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer s3cret"}) as s:
                async with s.get(f"{http_url(srv)}/audio/voices") as r:
                    voices = (await r.json())["voices"]
                async with s.get(f"{http_url(srv)}/audio/models") as r:
                    assert (await r.json()) == {"models": [{"id": "qwen3-tts"}]}
            assert {"id": "default"}.items() <= voices[0].items() and "name" in voices[0]
        async with running_server(tmp_path, auth_token="s3cret", public_listings=True) as srv:
            async with aiohttp.ClientSession() as s:  # Open WebUI lists without a token
                async with s.get(f"{http_url(srv)}/audio/voices") as r:
                    assert r.status == 200
                async with s.post(f"{http_url(srv)}/audio/speech", json={"input": "Hi.", "model": "m"}) as r:
                    assert r.status == 401  # speaking still needs it
    arun(body())


def test_model_loading_is_503_with_retry_after(tmp_path):
    from tests.server_harness import fake_loader

    gate = asyncio.Event()

    async def body():
        fake = FakeTTS()
        inner = fake_loader(fake, 2)
        loop = asyncio.get_running_loop()

        def slow_load():
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(30)
            return inner()

        from qwen3tts_jax.server.app import TTSServer
        from qwen3tts_jax.server.config import ServerConfig
        cfg = ServerConfig(host="127.0.0.1", port=0, http_port=0, voices_dir=tmp_path / "voices", batch_slots=2)
        srv = TTSServer(cfg, slow_load, model_name="slow")
        await srv.start()
        try:
            with pytest.raises(openai.InternalServerError) as e:
                await sdk(srv).audio.speech.create(model="m", voice="default", input="Hi.")
            assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "5"
            assert e.value.code == "model_loading"
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{srv.http.port}/healthz") as r:
                    assert r.status == 503
            gate.set()
            assert await srv.worker.loaded
            assert (await sdk(srv).audio.speech.create(model="m", voice="default", input="Hi.")).content
        finally:
            gate.set()
            await srv.shutdown()
    arun(body())


def test_client_disconnect_frees_the_slot(tmp_path):
    async def body():
        fake = FakeTTS(step_delay=0.03)
        async with running_server(tmp_path, fake) as srv:
            async with aiohttp.ClientSession() as s:
                r = await s.post(f"{http_url(srv)}/audio/speech", json={
                    "input": "A long answer. " * 40, "model": "m", "voice": "default", "response_format": "pcm"})
                assert r.status == 200
                assert await r.content.readexactly(2 * FRAME)
                assert srv.worker.active == 1
                steps = srv.worker.steps
                r.close()  # the client goes away mid-stream
            deadline = time.monotonic() + 2
            while srv.worker.active and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            assert srv.worker.active == 0
            assert srv.worker.steps - steps <= 3  # freed within a step or two of the close, not at the end
            assert fake.engines[0].active_slots() == []
            assert 'qwen3tts_requests_total{interface="http",outcome="disconnected"} 1.0' in \
                srv.metrics.exposition().decode()
            # Another request is served at once.
            pcm = (await sdk(srv).audio.speech.create(model="m", voice="default", input="Next.",
                                                      response_format="pcm")).content
            assert pcm == expected_pcm(srv, "Next.", encoding="pcm16", language="auto")
    arun(body())


def test_voice_upload_then_speak_with_it(tmp_path):
    async def body():
        async with running_server(tmp_path) as srv:
            buf = io.BytesIO()
            sf.write(buf, (0.1 * np.sin(np.arange(24000) / 10)).astype(np.float32), 24000, format="WAV")
            form = aiohttp.FormData()
            form.add_field("audio_sample", buf.getvalue(), filename="me.wav", content_type="audio/wav")
            form.add_field("name", "My Voice")
            form.add_field("consent", "cons_123")
            form.add_field("transcript", "Hello there.")
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{http_url(srv)}/audio/voices", data=form) as r:
                    assert r.status == 200, await r.text()
                    made = await r.json()
                assert made["id"] == "my-voice" and made["object"] == "audio.voice" and made["name"] == "My Voice"
                async with s.get(f"{http_url(srv)}/audio/voices") as r:
                    assert "my-voice" in [v["id"] for v in (await r.json())["voices"]]
                bad = aiohttp.FormData()
                bad.add_field("audio_sample", b"not audio", filename="x.wav")
                bad.add_field("name", "Broken")
                async with s.post(f"{http_url(srv)}/audio/voices", data=bad) as r:
                    assert r.status == 400
                    assert "decode" in (await r.json())["error"]["message"]
            pcm = (await sdk(srv).audio.speech.create(model="m", voice="my-voice", input="In my voice.",
                                                      response_format="pcm")).content
            assert pcm == expected_pcm(srv, "In my voice.", voice_id="my-voice", encoding="pcm16", language="auto")
            assert pcm != expected_pcm(srv, "In my voice.", encoding="pcm16", language="auto")
    arun(body())


def test_metrics_on_both_ports(tmp_path):
    async def body():
        async with running_server(tmp_path) as srv:
            async with Client.open(srv) as c:
                await c.start()
                await c.speak("Counted once.")
            async with aiohttp.ClientSession() as s:
                texts = []
                for port in (srv.port, srv.http.port):
                    async with s.get(f"http://127.0.0.1:{port}{P.METRICS_PATH}") as r:
                        assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
                        texts.append(await r.text())
            for text in texts:
                assert 'qwen3tts_requests_total{interface="ws",outcome="complete"} 1.0' in text
                assert 'qwen3tts_first_audio_seconds_count{interface="ws"} 1.0' in text
                assert "qwen3tts_batch_slots 4.0" in text and "qwen3tts_model_ready 1.0" in text
                assert "qwen3tts_step_seconds_count" in text
    arun(body())


def test_replayed_app_requests(tmp_path):
    """The exact requests Open WebUI, SillyTavern and LibreChat send (CLIENTS.md §1.7; too heavy
    to run here): Open WebUI lists voices and models without a key, then posts {input, voice,
    model} with no format (mp3); SillyTavern adds response_format mp3 and its speed slider at 1;
    LibreChat pipes two mp3 answers into one stream, which must still decode."""
    async def body():
        async with running_server(tmp_path, auth_token="k", public_listings=True) as srv:
            base = http_url(srv)
            auth = {"Authorization": "Bearer k"}
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{base}/audio/voices") as r:  # Open WebUI: requests.get, no headers
                    voices = {v["id"]: v["name"] for v in (await r.json())["voices"]}
                assert "default" in voices
                async with s.get(f"{base}/audio/models") as r:
                    assert [m["id"] for m in (await r.json())["models"]] == ["qwen3-tts"]
                bodies = []
                for payload in ({"input": "Open WebUI asks.", "voice": "default", "model": "tts-1"},
                                {"model": "tts-1", "input": "SillyTavern asks.", "voice": "alloy",
                                 "response_format": "mp3", "speed": 1},
                                {"input": "LibreChat asks.", "model": "tts-1", "voice": "default"}):
                    async with s.post(f"{base}/audio/speech", json=payload, headers=auth) as r:
                        assert r.status == 200 and r.headers["Content-Type"] == "audio/mpeg", await r.text()
                        bodies.append(await r.read())
            lengths = [decoded_samples(b)[0] for b in bodies]
            for text, n in zip(("Open WebUI asks.", "SillyTavern asks.", "LibreChat asks."), lengths, strict=True):
                want = len(expected_pcm(srv, text, encoding="pcm16", language="auto")) // 2
                assert want <= n <= want + 2 * 1152
            joined = decoded_samples(bodies[1] + bodies[2])  # LibreChat's concatenated stream
            assert joined[1] == 24000 and abs(joined[0] - (lengths[1] + lengths[2])) <= 2 * 1152
    arun(body())
