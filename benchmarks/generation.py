"""Decode speed, JAX vs the PyTorch reference, on a full-size model (random weights).

    python benchmarks/generation.py [--model 0.6b-base] [--frames 16] [--batch 1 4 8]
        [--dtypes float32 bfloat16] [--no-reference]

`--model`: any of the five released 12 Hz models (`common.MODELS`: 0.6b-base, 1.7b-base,
0.6b-custom-voice, 1.7b-custom-voice, 1.7b-voice-design), at its released sizes. Both run in
this one process, one after the other, on the same checkpoint and prompt (short English
text; a random x-vector voice for Base, the first preset speaker for CustomVoice, a described
voice for VoiceDesign). Reported as medians:
- reference: ms per frame of its own `generate` (EOS disabled by pointing `eos_token_id` at a
  suppressed id, so every run makes exactly the frames asked for), prefill excluded by
  differencing two run lengths; codec decode of those frames timed separately;
- JAX: ms per `BatchEngine.step` (one device call for talker + 15 code-predictor steps +
  sampling, then the streaming codec decode of the new frame) at each batch size, prefill
  (`admit`) time, and first-audio latency (admit + first step, PCM in hand); and the frame
  step alone (`generate_frames`, no codec: the reference's unit) at attention spans 128 and 512.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import time

import numpy as np
from common import MODELS, converted, full_size_checkpoint, median_ms, timed, write_result

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."
INSTRUCT = "A calm, warm voice, speaking at an even pace."  # VoiceDesign's voice


def reference_voice(ref) -> dict:
    """The reference `generate`'s voice arguments for the benchmark's voice of its model type."""
    cfg = ref.model.config
    if cfg.tts_model_type == "custom_voice":
        return {"speakers": [sorted(cfg.talker_config.spk_id)[0]], "non_streaming_mode": False}
    if cfg.tts_model_type == "voice_design":
        return {"instruct_ids": ref._tokenize_texts([ref._build_instruct_text(INSTRUCT)]), "non_streaming_mode": False}
    import torch
    from qwen_tts.inference.qwen3_tts_model import VoiceClonePromptItem

    hidden = cfg.talker_config.hidden_size
    emb = torch.from_numpy(np.random.default_rng(0).standard_normal(hidden).astype(np.float32))
    item = VoiceClonePromptItem(ref_code=None, ref_spk_embedding=emb, x_vector_only_mode=True, icl_mode=False)
    return {"voice_clone_prompt": ref._prompt_items_to_voice_clone_prompt([item]), "ref_ids": None}


def jax_voice(tts) -> dict:
    """Our request's voice arguments, the same voice as `reference_voice` (streaming text)."""
    from qwen3tts_jax import VoicePrompt

    if tts.model_type == "custom_voice":
        return {"speaker": tts.speakers[0], "non_streaming_text": False}
    if tts.model_type == "voice_design":
        return {"instruct": INSTRUCT, "non_streaming_text": False}
    hidden = tts.config.talker.hidden_size
    return {"voice": VoicePrompt(np.random.default_rng(0).standard_normal(hidden).astype(np.float32))}


def bench_reference(src, frames: int) -> dict:
    import torch

    from tests.reference.checkpoints import load_reference

    torch.set_num_threads(os.cpu_count())
    ref = load_reference(src)
    voice = reference_voice(ref)
    # EOS never wins: point it at an id of the suppressed control range that is no control id.
    never = ref.model.config.talker_config.codec_eos_token_id + 1

    def run(n):
        return ref.model.generate(
            input_ids=ref._tokenize_texts([ref._build_assistant_text(TEXT)]), languages=["English"], **voice,
            max_new_tokens=n + 1, eos_token_id=never, do_sample=True, top_k=50, top_p=1.0, temperature=0.9,
            subtalker_dosample=True, subtalker_top_k=50, subtalker_top_p=1.0, subtalker_temperature=0.9,
            repetition_penalty=1.05)

    run(2)
    short = timed(lambda: run(2), 3)
    long_ = timed(lambda: run(2 + frames), 3)
    per_frame = (np.median(long_) - np.median(short)) / frames
    codes = run(frames)[0][0]
    ref.model.speech_tokenizer.decode([{"audio_codes": codes}])  # warm-up
    decode = timed(lambda: ref.model.speech_tokenizer.decode([{"audio_codes": codes}]), 3)
    return {"ms_per_frame": round(1000 * per_frame, 1), "prefill_plus_2_frames_ms": median_ms(short),
            "codec_decode_ms_per_frame": round(median_ms(decode) / frames, 1), "threads": os.cpu_count()}


def heads_ab(tts, engine, frames: int, rounds: int = 5) -> dict:
    """The frame step (span 128) with the code predictor's heads on the CPU kernel (packed, as the
    engine runs) and as XLA float32 dots, interleaved in rounds in this one process."""
    parts = tts.decode_parts()  # the float32 parts the packed ones were made from
    variants = {"kernel": (engine.spec, engine.weights),
                "float32": (dataclasses.replace(engine.spec, packed_heads=False),
                            dataclasses.replace(engine.weights, heads=parts.weights.heads))}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (spec, weights) in variants.items():
            saved = engine.weights
            engine.weights = weights
            times[name].append(generate_only_ms(engine, GENERATE_SPANS[0], frames, spec))
            engine.weights = saved
    return {f"heads_{name}_ms_per_step_span_128": round(float(np.median(t)), 2) for name, t in times.items()}


def bench_engine(tts, voice: dict, b: int, frames: int, both_loops: bool = False,
                 compare_heads: bool = False) -> dict:
    import jax

    from qwen3tts_jax import GenerationRequest

    engine = tts.batch_engine(b, max_seq_len=1024)
    request = GenerationRequest(TEXT, language="English", max_new_frames=10_000, **voice)
    start = time.perf_counter()
    for slot in range(b):
        engine.admit(slot, request)
    engine.step()
    compile_s = time.perf_counter() - start
    for slot in range(b):                      # warm: now measure admit (prefill) alone
        engine.release(slot)

    def admit_once():
        engine.admit(0, request)
        engine.release(0)
    admit = timed(admit_once, 3)
    first = []
    for _ in range(3):
        start = time.perf_counter()
        engine.admit(0, request)
        pcm = engine.step()[0].pcm
        first.append(time.perf_counter() - start)
        engine.release(0)
        assert pcm.size == 1920
    for slot in range(b):
        engine.admit(slot, request)
    steps = timed(engine.step, frames)
    jax.block_until_ready(engine.state.length)
    step_ms = median_ms(steps)
    generate = {span: generate_only_ms(engine, span, frames) for span in GENERATE_SPANS}
    other = {}
    if both_loops:  # the code predictor's other loop form (DecodeSpec.unroll_predictor), span 128
        unroll = not engine.spec.unroll_predictor
        spec = dataclasses.replace(engine.spec, unroll_predictor=unroll)
        other = {f"generate_ms_per_step_span_128_{'unrolled' if unroll else 'loop'}":
                 generate_only_ms(engine, GENERATE_SPANS[0], frames, spec)}
    if compare_heads and engine.spec.packed_heads:
        other |= heads_ab(tts, engine, frames)
    return {"ms_per_step": step_ms, "ms_per_frame": round(step_ms / b, 2), "x_realtime": round(b * 80 / step_ms, 3),
            "prefill_ms": median_ms(admit), "first_audio_ms": median_ms(first), "first_call_s": round(compile_s, 1),
            **{f"generate_ms_per_step_span_{span}": ms for span, ms in generate.items()}, **other}


def bench_active_rows(tts, voice: dict, slots: int, actives: list[int], frames: int) -> dict:
    """A `slots`-slot engine with only `n` active requests: ms per engine step (with audio) and
    per frame step alone (span 128), for each n. Idle slots should cost nothing."""
    import jax

    from qwen3tts_jax import GenerationRequest, buckets, generation

    engine = tts.batch_engine(slots, max_seq_len=1024)
    request = GenerationRequest(TEXT, language="English", max_new_frames=10_000, **voice)
    out = {}
    for n in actives:
        for slot in range(n):
            engine.admit(slot, request)
        engine.step()  # compiles this row count
        steps = timed(engine.step, frames)
        rows = buckets.active_rows(n, slots)
        parts = engine.parts.for_rows(rows)

        def one(parts=parts, rows=rows):
            engine.state, o = generation.generate_frames(parts.spec, parts.weights, engine.state, 1,
                                                         GENERATE_SPANS[0], rows)
            jax.block_until_ready(o)
        one()
        out[f"active_{n}"] = {"rows_computed": rows, "ms_per_step": median_ms(steps),
                              "generate_ms_per_step_span_128": median_ms(timed(one, frames))}
        print("active rows", slots, n, out[f"active_{n}"], flush=True)
        for slot in range(n):
            engine.release(slot)
    return out


def device_memory() -> dict | None:
    """The accelerator allocator's peak and current bytes (None on CPU, which keeps no stats)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return {k: round(stats[k] / 2**30, 3) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
            if k in stats} | {"unit": "GiB"}


def bench_long_batch(tts, voice: dict, rows: int, max_seq_len: int, frames: int) -> dict:
    """A full batch with caches of `max_seq_len` frames: does it fit, and the memory it takes."""
    from qwen3tts_jax import GenerationRequest

    engine = tts.batch_engine(rows, max_seq_len=max_seq_len)
    request = GenerationRequest(TEXT, language="English", max_new_frames=10_000, **voice)
    for slot in range(rows):
        engine.admit(slot, request)
    steps = timed(engine.step, frames)
    cache = sum(x.nbytes for x in engine.state.cache.keys + engine.state.cache.values)
    return {"rows": rows, "max_seq_len": max_seq_len, "ms_per_step": median_ms(steps[1:]),
            "kv_cache_gib": round(cache / 2**30, 3), "device_memory": device_memory()}


# Attention spans timed for the frame step alone: 128 is what the short benchmark utterance
# uses; 512 is the span of a ~30 s utterance (cost depends on the span, not on the contents).
GENERATE_SPANS = (128, 512)


def generate_only_ms(engine, span: int, frames: int, spec=None) -> float:
    """ms per frame step (talker + code predictor + sampling, no codec): the reference's unit."""
    import jax

    from qwen3tts_jax import generation

    spec = spec or engine.spec

    def one():
        engine.state, out = generation.generate_frames(spec, engine.weights, engine.state, 1, span)
        jax.block_until_ready(out)
    one()  # compiles this span once
    return median_ms(timed(one, frames))


def bench_jax(src, dtype: str, batches: list[int], frames: int, both_loops: bool, long_batch: bool,
              compare_heads: bool = False, active_slots: int = 0) -> dict:
    from qwen3tts_jax import Qwen3TTS

    tts = Qwen3TTS.from_pretrained(converted(src, dtype))
    voice = jax_voice(tts)
    out = {}
    for b in batches:
        out[f"batch_{b}"] = bench_engine(tts, voice, b, frames, both_loops, compare_heads)
        gc.collect()
        print(dtype, b, out[f"batch_{b}"], flush=True)
    if active_slots:
        out[f"engine_{active_slots}_slots"] = bench_active_rows(tts, voice, active_slots, batches, frames)
    out["device_memory"] = device_memory()
    if long_batch:
        out["batch_16_seq_2048"] = bench_long_batch(tts, voice, 16, 2048, 4)
        print(dtype, out["batch_16_seq_2048"], flush=True)
    import jax.numpy as jnp

    from qwen3tts_jax import generation, prompt

    # One frame step per batch size, one prefill per (prompt bucket, batch size): counted here.
    out["compiled_executables"] = {"generate_frames": generation.generate_frames._cache_size(),
                                   "prefill": generation.prefill._cache_size(),
                                   "prompt_embed": prompt._embed._cache_size()}
    cfg = tts.config.talker
    out["kv_cache_bytes_per_frame_per_row"] = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
                                               * jnp.dtype(dtype).itemsize)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="0.6b-base", choices=sorted(MODELS))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--native", action="store_true",
                        help="build the full-size random checkpoint without torch (implies --no-reference)")
    parser.add_argument("--both-loops", action="store_true",
                        help="also time the code predictor's other loop form (unrolled vs fori_loop)")
    parser.add_argument("--long-batch", action="store_true",
                        help="also run 16 rows with 2048-frame caches and report device memory")
    parser.add_argument("--heads-ab", action="store_true",
                        help="packed engines: also time the code predictor's heads on the CPU kernel against "
                             "XLA's float32 dot, interleaved")
    parser.add_argument("--active-slots", type=int, default=0, metavar="SLOTS",
                        help="also time an engine of SLOTS slots with only `--batch` n requests active")
    parser.add_argument("--name", default="generation_cpu")
    args = parser.parse_args()
    src = full_size_checkpoint(args.model, native=args.native)
    args.no_reference |= args.native
    result = {"model": f"{args.model} full size, random weights", "text": TEXT, "frames_timed": args.frames}
    if not args.no_reference:
        result["reference_float32"] = bench_reference(src, args.frames)
        gc.collect()
        print("reference", result["reference_float32"], flush=True)
    for dtype in args.dtypes:
        result[f"jax_{dtype}"] = bench_jax(src, dtype, args.batch, args.frames, args.both_loops, args.long_batch,
                                           args.heads_ab, args.active_slots)
    if "reference_float32" in result:
        ref = result["reference_float32"]["ms_per_frame"]
        result["speedup_vs_reference_batch1"] = {
            d: round(ref / result[f"jax_{d}"]["batch_1"]["ms_per_step"], 2) for d in args.dtypes}
        # Like for like with the reference's unit (frames made, no codec), span 128.
        result["generate_fps_vs_reference"] = {
            d: {name: round(ref * int(name.split("_")[1]) / r["generate_ms_per_step_span_128"], 2)
                for name, r in result[f"jax_{d}"].items() if name.startswith("batch_")}
            for d in args.dtypes}
    write_result(args.name, result)


if __name__ == "__main__":
    main()
