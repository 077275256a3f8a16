"""One utterance through LiveKit Agents' own `livekit.plugins.openai.TTS`, against our OpenAI-compatible API.

Run with the LiveKit integration venv's python (`make integrations`), not the project's:

    .venv-integrations/livekit/bin/python tests/integrations/livekit_speak.py \
        --base-url http://127.0.0.1:8000/v1 --text "Hello there." --response-format pcm

No room, no job: `TTS.synthesize()` is driven directly, as an agent's pipeline would. The plugin asks
for `stream_format="sse"` (every model but tts-1/tts-1-hd) and decodes by the response's Content-Type
(PyAV for mp3/wav/...; raw PCM as is). Prints one JSON line: the `SynthesizedAudio` events (count,
which is final, request ids), sample rate, channels, samples, sha256 and RMS of the int16 PCM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging

import numpy as np
from livekit.agents import APIConnectOptions
from livekit.plugins import openai as lk_openai

SMALL = 4096  # PCM at most this long is returned whole (base64) as well as hashed


async def speak(base_url: str, text: str, voice: str, model: str, response_format: str) -> dict:
    tts = lk_openai.TTS(base_url=base_url, api_key="x", model=model, voice=voice, response_format=response_format)
    events, pcm, rates, channels, request_ids, errors = [], [], set(), set(), set(), []
    tts.on("error", lambda e: errors.append(repr(e.error)))
    try:
        # max_retry=0: one request, so a failure shows as itself rather than as a retried one.
        async with tts.synthesize(text, conn_options=APIConnectOptions(max_retry=0)) as stream:
            async for ev in stream:
                events.append({"type": type(ev).__name__, "final": ev.is_final,
                               "samples": ev.frame.samples_per_channel})
                rates.add(ev.frame.sample_rate)
                channels.add(ev.frame.num_channels)
                request_ids.add(ev.request_id)
                pcm.append(bytes(ev.frame.data.cast("B")))  # int16 interleaved
    finally:
        await tts.aclose()
    # LiveKit's AudioEmitter ends a segment with a final event. When the plugin's closing flush()
    # already sent the held-back tail (raw PCM always), that event is a 10 ms all-zero marker
    # (`AudioEmitter._main_task`): report it apart, so the audio itself can be compared.
    marker = bool(events) and events[-1]["final"] and events[-1]["samples"] == min(rates) // 100 \
        and not any(pcm[-1])
    audio = b"".join(pcm[:-1] if marker else pcm)
    data = b"".join(pcm)
    x = np.frombuffer(audio, dtype="<i2").astype(np.float64)
    out = {"framework": "livekit", "response_format": response_format,
           "event_types": sorted({e["type"] for e in events}), "events": len(events),
           "finals": [i for i, e in enumerate(events) if e["final"]], "request_ids": sorted(request_ids),
           "sample_rates": sorted(rates), "channels": sorted(channels),
           "samples": len(data) // 2, "sha256": hashlib.sha256(data).hexdigest(),
           "silent_final_marker": marker, "audio_samples": len(audio) // 2,
           "audio_sha256": hashlib.sha256(audio).hexdigest(),
           "audio_rms": round(float(np.sqrt(np.mean(x * x))), 1) if x.size else 0.0, "errors": errors}
    if len(audio) <= SMALL:
        out["pcm_b64"] = base64.b64encode(audio).decode("ascii")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--voice", default="alloy")
    ap.add_argument("--model", default="qwen3-tts")
    ap.add_argument("--response-format", default="pcm")
    ap.add_argument("--timeout", type=float, default=45.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = asyncio.run(asyncio.wait_for(
        speak(args.base_url, args.text, args.voice, args.model, args.response_format), args.timeout))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
