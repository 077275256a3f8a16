"""Speech tokenizer speed, JAX vs the reference, at the released sizes (random weights).

    python benchmarks/codec.py

Decoder: ms per frame of the one-pass decode for 1 s and 10 s of codes (the reference's own
`decode`), and the streaming decoder's ms per call feeding one frame at a time, early and
late in a 10 s utterance (it must stay flat). Encoder: ms per second of audio for 3 s and
10 s clips. All float32, medians, both sides in this one process.
"""

from __future__ import annotations

import os
import time

import numpy as np
from common import converted, full_size_checkpoint, median_ms, timed, write_result

SECONDS = (1, 10)


def main() -> None:
    import jax
    import torch
    from qwen_tts import Qwen3TTSTokenizer

    import qwen3tts_jax
    from qwen3tts_jax import codec_decoder, codec_encoder
    from qwen3tts_jax.streaming_decoder import StreamingDecoder

    torch.set_num_threads(os.cpu_count())
    src = full_size_checkpoint()
    ref = Qwen3TTSTokenizer.from_pretrained(str(src / "speech_tokenizer"), dtype=torch.float32, device_map="cpu")
    model = qwen3tts_jax.load(converted(src, "float32"), ["codec_decoder", "codec_encoder"])
    rng = np.random.default_rng(0)
    result = {"model": "speech tokenizer 12 Hz, released sizes, random weights", "decoder": {}, "encoder": {}}
    for seconds in SECONDS:
        frames = int(seconds * 12.5)
        codes = rng.integers(0, 2048, (frames, 16)).astype(np.int32)
        ref.decode([{"audio_codes": torch.from_numpy(codes).long()}])
        ref_ms = median_ms(timed(lambda c=codes: ref.decode([{"audio_codes": torch.from_numpy(c).long()}]), 3))
        jax.block_until_ready(codec_decoder.decode(model.codec_decoder, codes[None]))
        jax_ms = median_ms(timed(lambda c=codes: jax.block_until_ready(
            codec_decoder.decode(model.codec_decoder, c[None])), 3))
        result["decoder"][f"{seconds}s"] = {"frames": frames, "reference_ms_per_frame": round(ref_ms / frames, 1),
                                            "jax_one_pass_ms_per_frame": round(jax_ms / frames, 1)}
    # Streaming: one frame per call through a 10 s utterance; early vs late calls.
    stream = StreamingDecoder(model.codec_decoder, 1)
    codes = rng.integers(0, 2048, (125, 16)).astype(np.int32)
    state = stream.state
    per_call = []
    for t in range(125):
        start = time.perf_counter()
        pcm, state = stream.step(state, codes[None, t:t + 1])
        jax.block_until_ready(pcm)
        per_call.append(time.perf_counter() - start)
    result["decoder"]["streaming_1_frame_per_call"] = {
        "ms_per_call_frames_2_to_20": median_ms(per_call[2:20]),
        "ms_per_call_frames_105_to_125": median_ms(per_call[105:]),
        "compile_first_call_s": round(per_call[0], 2)}
    for seconds in (3, 10):
        wav = (0.1 * rng.standard_normal(24000 * seconds)).astype(np.float32)
        ref.encode(wav, sr=24000)
        ref_ms = median_ms(timed(lambda w=wav: ref.encode(w, sr=24000), 3))
        codec_encoder.encode(model.codec_encoder, wav)
        jax_ms = median_ms(timed(lambda w=wav: codec_encoder.encode(model.codec_encoder, w), 3))
        result["encoder"][f"{seconds}s"] = {"reference_ms_per_audio_second": round(ref_ms / seconds, 1),
                                            "jax_ms_per_audio_second": round(jax_ms / seconds, 1)}
    write_result("codec_cpu", result)


if __name__ == "__main__":
    main()
