"""One utterance through Pipecat's own `OpenAITTSService`, against our OpenAI-compatible API.

Run with the Pipecat integration venv's python (`make integrations`), not the project's:

    .venv-integrations/pipecat/bin/python tests/integrations/pipecat_speak.py \
        --base-url http://127.0.0.1:8000/v1 --text "Hello there."

Prints one JSON line: what reached the end of the pipeline (frame types in order, sample rate,
channels, samples, sha256 of the int16 PCM) and any `ErrorFrame`s. Exit code 0 when it ran to the
end, whatever arrived: the caller asserts on the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sys

from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.tts import OpenAITTSService
from pipecat.workers.runner import WorkerRunner

SMALL = 4096  # PCM at most this long is returned whole (base64) as well as hashed
WATCHED = (TTSStartedFrame, TTSAudioRawFrame, TTSStoppedFrame)


class Recorder(FrameProcessor):
    """Passes every frame on; notes the TTS frames going downstream and errors going either way."""

    def __init__(self, seen: dict, errors_only: bool = False):
        super().__init__()
        self.seen = seen
        self.errors_only = errors_only

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, ErrorFrame):
            self.seen["errors"].append(str(frame.error))
        elif not self.errors_only and direction == FrameDirection.DOWNSTREAM and isinstance(frame, WATCHED):
            name = type(frame).__name__
            if not self.seen["frames"] or self.seen["frames"][-1] != name:
                self.seen["frames"].append(name)  # consecutive audio frames collapsed into one entry
            if isinstance(frame, TTSAudioRawFrame):
                self.seen["audio_frames"] += 1
                self.seen["rates"].add(frame.sample_rate)
                self.seen["channels"].add(frame.num_channels)
                self.seen["pcm"].append(frame.audio)
        await self.push_frame(frame, direction)


async def speak(base_url: str, text: str, voice: str, model: str) -> dict:
    seen = {"frames": [], "audio_frames": 0, "rates": set(), "channels": set(), "pcm": [], "errors": []}
    tts = OpenAITTSService(api_key="x", base_url=base_url,
                           settings=OpenAITTSService.Settings(voice=voice, model=model))
    # Upstream recorder first (ErrorFrames travel upstream), the sink last.
    pipeline = Pipeline([Recorder(seen, errors_only=True), tts, Recorder(seen)])
    # PipelineWorker/WorkerRunner are 1.14's names; PipelineTask/PipelineRunner are deprecated (since 1.3)
    # aliases of them.
    worker = PipelineWorker(pipeline, params=PipelineParams(audio_out_sample_rate=24000), enable_rtvi=False,
                            idle_timeout_secs=None)
    await worker.queue_frames([TTSSpeakFrame(text), EndFrame()])
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()  # ends when the pipeline has passed the EndFrame
    pcm = b"".join(seen["pcm"])
    out = {"framework": "pipecat", "frames": seen["frames"], "audio_frames": seen["audio_frames"],
           "sample_rates": sorted(seen["rates"]), "channels": sorted(seen["channels"]),
           "samples": len(pcm) // 2, "sha256": hashlib.sha256(pcm).hexdigest(), "errors": seen["errors"]}
    if len(pcm) <= SMALL:
        out["pcm_b64"] = base64.b64encode(pcm).decode("ascii")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--voice", default="alloy")
    ap.add_argument("--model", default="qwen3-tts")
    ap.add_argument("--timeout", type=float, default=45.0)
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    out = asyncio.run(asyncio.wait_for(speak(args.base_url, args.text, args.voice, args.model), args.timeout))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
