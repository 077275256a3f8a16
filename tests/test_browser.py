"""The browser demo page (server/static/index.html) in a real headless Chromium.

A real server (fake engine) runs on a loopback port in a background thread's asyncio loop;
Selenium drives Debian's chromium, which loads the page from `GET /`, fills the voice list
from `GET /api/v1/voices`, speaks over the WebSocket and plays the PCM through its
AudioWorklet (headless Chromium runs the audio clock without a sound card).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.fake_engine import FRAME, SAMPLE_RATE, FakeTTS
from tests.server_harness import expected_pcm, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 20.0
BUILTIN_DEFAULT = Path(__file__).resolve().parents[1] / "server" / "voices" / "default"
MAX_AUDIO_S = 2.0  # the server's cap on one request's audio: keeps each playback at 2 s


def page_pcm(srv, text: str) -> bytes:
    """The pcm16 the page should receive for `text`. The page sends no `maxFrames`, so the
    server gives the request its budget (3 s + 0.25 s per character, at most MAX_AUDIO_S,
    at 12.5 frames/s), and the fake engine, which has no end token, makes exactly that."""
    frames = int(min(MAX_AUDIO_S, 3.0 + 0.25 * len(text)) * SAMPLE_RATE / FRAME)
    return expected_pcm(srv, text, encoding="pcm16", max_new_frames=frames)


@contextlib.contextmanager
def server_thread(tmp_path: Path, **overrides):
    """`running_server` in its own thread's event loop, so Selenium's blocking calls can run here."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server", daemon=True)
    thread.start()
    cm = running_server(tmp_path, **overrides)
    try:
        srv = asyncio.run_coroutine_threadsafe(cm.__aenter__(), loop).result(30)
        try:
            yield srv
        finally:
            asyncio.run_coroutine_threadsafe(cm.__aexit__(None, None, None), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def add_voice(voices_dir: Path, voice_id: str, name: str) -> None:
    """A second stored voice (the shipped default's audio under another id)."""
    d = voices_dir / voice_id
    d.mkdir(parents=True)
    shutil.copy(BUILTIN_DEFAULT / "reference.wav", d / "reference.wav")
    shutil.copy(BUILTIN_DEFAULT / "transcript.txt", d / "transcript.txt")
    (d / "manifest.json").write_text(json.dumps({
        "id": voice_id, "name": name, "language": "English", "description": "", "isDefault": False,
        "reference": "reference.wav", "transcript": "transcript.txt"}))


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make .venv/.test` (the project set-up installs "
                    "Debian's chromium and chromium-driver)", pytrace=False)
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    d.set_page_load_timeout(WAIT_S)
    d.set_script_timeout(WAIT_S)
    try:
        yield d
    finally:
        d.quit()


def stats(d) -> dict:
    return d.execute_script("return window.__stats")


def wait_for(d, script: str, what: str):
    try:
        return WebDriverWait(d, WAIT_S, poll_frequency=0.05).until(lambda d: d.execute_script(script))
    except Exception as exc:
        raise AssertionError(f"timed out waiting for {what}; __stats = {stats(d)}") from exc


def open_page(d, srv) -> None:
    d.get_log("browser")  # drop what earlier tests left
    d.get(f"http://127.0.0.1:{srv.port}/")
    assert d.execute_script("return typeof window.__stats") == "object", (
        "GET / did not serve the demo page: TTSServer._process_request must return "
        "demo_page.page_response(path) for it")
    # the voice list (GET /api/v1/voices) and the languages (the `ready` of the first session)
    wait_for(d, "return document.querySelector('#voice option[value=\"default\"]') !== null", "the voice list")
    wait_for(d, "return document.querySelectorAll('#language option').length > 1", "the language list")


def streamed_pcm(srv, text: str) -> bytes:
    """The pcm16 of a streamed (textStream) request: its length is not known when it opens, so
    the server gives it the whole MAX_AUDIO_S budget."""
    return expected_pcm(srv, text, encoding="pcm16", max_new_frames=int(MAX_AUDIO_S * SAMPLE_RATE / FRAME))


def downloaded_wav(d) -> bytes:
    """The bytes behind the page's "Download WAV" link."""
    wav_b64 = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('download').href).then((r) => r.arrayBuffer()).then((buf) => {
          let s = ''; const b = new Uint8Array(buf);
          for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
          done(btoa(s));
        }).catch((e) => done('ERROR ' + e));""")
    return base64.b64decode(wav_b64)


def severe_logs(d) -> list:
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


PLAYED = "const s = window.__stats; return s.state === 'done' && s.samplesPlayed >= s.samplesAnnounced"


def speak(d, text: str) -> None:
    box = d.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    d.find_element(By.ID, "speak").click()


def test_page_speaks_plays_and_offers_the_wav(tmp_path, driver):
    add_voice(tmp_path / "voices", "alice", "Alice")
    text = "Hello from the browser test, streamed frame by frame."
    with server_thread(tmp_path, max_audio_seconds=MAX_AUDIO_S) as srv:
        t0 = time.monotonic()
        open_page(driver, srv)
        assert driver.title.startswith("qwen3tts-jax")

        voices = {o.get_attribute("value"): o.text for o in Select(driver.find_element(By.ID, "voice")).options}
        assert set(voices) == {v["id"] for v in srv.voice_list()} == {"default", "alice"}
        assert Select(driver.find_element(By.ID, "voice")).first_selected_option.get_attribute("value") == "default"
        languages = [o.get_attribute("value") for o in Select(driver.find_element(By.ID, "language")).options]
        assert languages == ["auto", *srv.capabilities()["languages"]]

        speak(driver, text)
        wait_for(driver, "const s = window.__stats; return s.state === 'done' && s.samplesPlayed >= s.samplesAnnounced",
                 "the utterance to finish playing")
        s = stats(driver)
        want = page_pcm(srv, text)
        n = len(want) // 2
        assert n > 0
        assert s["samplesReceived"] == s["samplesAnnounced"] == n, s
        assert s["samplesPlayed"] == n, s
        assert s["requestsDone"] == 1 and s["error"] is None, s
        assert 0 < s["firstAudioMs"] < WAIT_S * 1000 and s["serverFirstAudioMs"] >= 0, s
        shown = driver.find_element(By.ID, "s-first").text
        assert shown.endswith(" ms"), shown

        link = driver.find_element(By.ID, "download")
        assert link.is_displayed() and link.text == "Download WAV"
        wav = downloaded_wav(driver)
        assert len(wav) == 44 + 2 * n
        assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt " and wav[36:40] == b"data"
        assert int.from_bytes(wav[24:28], "little") == 24000
        assert wav[44:] == want  # the very samples the engine made, in order

        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        assert time.monotonic() - t0 < 30


def test_stop_cancels_the_running_request(tmp_path, driver):
    slow = FakeTTS(step_delay=0.1)  # 25 frames in 2.5 s: Stop lands mid-request
    with server_thread(tmp_path, fake=slow, max_audio_seconds=MAX_AUDIO_S) as srv:
        open_page(driver, srv)
        speak(driver, "A request that the user stops half-way.")
        wait_for(driver, "return window.__stats.samplesReceived > 0", "the first audio")
        driver.find_element(By.ID, "stop").click()
        wait_for(driver, "return window.__stats.state === 'stopped'", "the cancelled complete")
        s = stats(driver)
        # `complete {cancelled}` counts what was sent before the cancel: all of it arrived first.
        assert 0 < s["samplesReceived"] == s["samplesAnnounced"] < MAX_AUDIO_S * SAMPLE_RATE, s
        assert s["requestsDone"] == 1 and s["error"] is None, s
        assert not driver.find_element(By.ID, "download").is_displayed()

        speak(driver, "Then another.")
        wait_for(driver, "const s = window.__stats; return s.state === 'done' && s.samplesPlayed >= s.samplesAnnounced",
                 "the next utterance")
        assert stats(driver)["samplesReceived"] == len(page_pcm(srv, "Then another.")) // 2
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe


def test_page_shows_the_servers_error(tmp_path, driver):
    with server_thread(tmp_path, max_text_chars=20, max_audio_seconds=MAX_AUDIO_S) as srv:
        open_page(driver, srv)
        assert driver.find_element(By.ID, "counter").text.endswith(" / 20")  # maxTextChars from `ready`
        speak(driver, "This text is longer than twenty characters.")
        wait_for(driver, "return window.__stats.state === 'error'", "the error state")
        s = stats(driver)
        assert s["error"]["code"] == "INVALID_TEXT", s
        assert s["samplesReceived"] == 0 and s["requestsDone"] == 0, s
        shown = driver.find_element(By.ID, "error")
        assert shown.is_displayed() and shown.text.startswith("INVALID_TEXT: "), shown.text
        assert driver.find_element(By.ID, "s-state").text == "error"
        assert not driver.find_element(By.ID, "download").is_displayed()

        # The session survives a non-fatal error: the next request plays.
        speak(driver, "Short one.")
        wait_for(driver, "const s = window.__stats; return s.state === 'done' && s.samplesPlayed >= s.samplesAnnounced",
                 "the next utterance")
        assert stats(driver)["samplesReceived"] == len(page_pcm(srv, "Short one.")) // 2
        assert not driver.find_element(By.ID, "error").is_displayed()


def type_mode_on(d):
    """Tick "Speak as I type" and empty the box; returns the text box."""
    box = d.find_element(By.ID, "text")
    assert not d.find_element(By.ID, "type-mode").is_selected()  # the whole-text mode is the default
    d.find_element(By.ID, "type-mode").click()
    assert d.find_element(By.ID, "type-hint").is_displayed()
    box.clear()
    return box


def test_speak_as_i_type_streams_the_text(tmp_path, driver):
    bursts = ["Typed ", "in a few", " bursts, with", " pauses."]
    text = "".join(bursts)
    with server_thread(tmp_path, max_audio_seconds=MAX_AUDIO_S) as srv:
        t0 = time.monotonic()
        open_page(driver, srv)
        box = type_mode_on(driver)
        for burst in bursts:
            box.send_keys(burst)  # one key event per character
            time.sleep(0.4)  # past the page's 150 ms debounce: each burst's tail goes out on its own
        s = stats(driver)
        # The request is open and has its text so far; the fake engine speaks only after endText.
        assert s["state"] == "speaking" and s["textStream"] is True and s["samplesReceived"] == 0, s
        assert s["piecesSent"] >= len(bursts), s
        pieces = s["piecesSent"]
        box.send_keys(Keys.ENTER)  # endText
        wait_for(driver, PLAYED, "the streamed utterance to finish playing")
        s = stats(driver)
        want = streamed_pcm(srv, text)  # the tone of the concatenated text: the pieces arrived whole, in order
        n = len(want) // 2
        assert n > 0
        assert s["samplesReceived"] == s["samplesAnnounced"] == s["samplesPlayed"] == n, s
        assert s["requestsDone"] == 1 and s["error"] is None, s
        assert s["textStream"] is True and s["piecesSent"] == pieces >= 2, s  # Enter sent no new text
        assert isinstance(s["textWaitMs"], (int, float)) and s["textWaitMs"] >= 0, s
        assert box.get_attribute("value") == text  # Enter ended the text instead of typing a newline
        assert downloaded_wav(driver)[44:] == want
        assert not driver.find_element(By.ID, "type-note").is_displayed()
        assert not severe_logs(driver)
        assert time.monotonic() - t0 < 30


def test_speak_as_i_type_ignores_edits_of_sent_text_and_stops(tmp_path, driver):
    with server_thread(tmp_path, max_audio_seconds=MAX_AUDIO_S) as srv:
        open_page(driver, srv)
        box = type_mode_on(driver)
        box.send_keys("Hello world")
        wait_for(driver, "return window.__stats.piecesSent >= 2", "the pieces")
        time.sleep(0.3)
        note = driver.find_element(By.ID, "type-note")
        assert not note.is_displayed()
        # An edit before the end: not spoken, the notice says so; nor is what is typed after it.
        box.send_keys(Keys.HOME, "Oh, ", Keys.END, " again.")
        wait_for(driver, "return !document.getElementById('type-note').classList.contains('hidden')", "the notice")
        time.sleep(0.3)
        pieces = stats(driver)["piecesSent"]
        box.send_keys(Keys.ENTER)
        wait_for(driver, PLAYED, "the streamed utterance")
        s = stats(driver)
        want = streamed_pcm(srv, "Hello world")  # every streamed request has the same length: the tone tells
        assert s["samplesReceived"] == s["samplesAnnounced"] == len(want) // 2, s
        assert downloaded_wav(driver)[44:] == want
        assert s["piecesSent"] == pieces and s["error"] is None, s
        assert not note.is_displayed()

        # The next keystroke starts from the box as it is (it no longer begins with what was spoken);
        # Stop cancels the open request.
        box.send_keys(" More")
        wait_for(driver, "const s = window.__stats; return s.state === 'speaking' && s.piecesSent >= 1",
                 "the next streamed request")
        driver.find_element(By.ID, "stop").click()
        wait_for(driver, "return window.__stats.state === 'stopped'", "the cancelled complete")
        s = stats(driver)
        assert s["requestsDone"] == 1 and s["samplesReceived"] == 0 and s["error"] is None, s

        # After Stop only what is typed next is spoken: a new request with just that text.
        box.send_keys(" Last words.")
        box.send_keys(Keys.ENTER)
        wait_for(driver, PLAYED, "the last streamed utterance")
        want = streamed_pcm(srv, " Last words.")
        assert stats(driver)["samplesReceived"] == len(want) // 2
        assert downloaded_wav(driver)[44:] == want
        assert not severe_logs(driver)
