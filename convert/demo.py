"""A small random-weight checkpoint in the official layout, made without torch.

The server's embedded default: it lets the whole stack (converter, model, codec, server)
run on a fresh machine with nothing downloaded. Its weights are random, so its audio is
noise-like, not speech; real weights come from `--model Qwen/Qwen3-TTS-12Hz-0.6B-Base` or a
local folder. Sizes are the released 0.6B-Base shrunk; every token id, codec id, language
id and rate is the real one, and the text tokenizer is the real one.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from qwen3tts_jax.convert.assets import BASE_06B
from qwen3tts_jax.convert.export import to_source_tensors
from qwen3tts_jax.convert.safetensors_reader import write_safetensors

DEMO_SIZES = {
    "talker": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, text_hidden_size=64),
    "code_predictor": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=32),
    "speaker_encoder": dict(enc_channels=[64, 64, 64, 64, 192], enc_attention_channels=32, enc_res2net_scale=4,
                            enc_se_channels=16, enc_dim=128),
    "decoder": dict(codebook_dim=64, hidden_size=64, latent_dim=128, head_dim=16, num_attention_heads=4,
                    num_key_value_heads=4, intermediate_size=128, num_hidden_layers=2, decoder_dim=128),
    "encoder": dict(num_filters=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, head_dim=16, intermediate_size=128, codebook_dim=32,
                    vector_quantization_hidden_dimension=32, upsample_groups=64),
}


def demo_configs() -> tuple[dict, dict]:
    """(`config.json`, `speech_tokenizer/config.json`) of the demo model."""
    main = copy.deepcopy(json.loads((BASE_06B / "config.json").read_text()))
    tok = copy.deepcopy(json.loads((BASE_06B / "speech_tokenizer" / "config.json").read_text()))
    main["talker_config"].update(DEMO_SIZES["talker"])
    main["talker_config"]["code_predictor_config"].update(DEMO_SIZES["code_predictor"])
    main["speaker_encoder_config"].update(DEMO_SIZES["speaker_encoder"])
    tok["decoder_config"].update(DEMO_SIZES["decoder"])
    tok["encoder_config"].update(DEMO_SIZES["encoder"])
    return main, tok


def random_params(cfg, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Random Flax parameters of every component, with usable codebooks."""
    from qwen3tts_jax import components
    from qwen3tts_jax.params import flat_params

    rng = np.random.default_rng(seed)
    params = {}
    for i, name in enumerate(components.present(cfg)):
        flat = {k: np.asarray(v) for k, v in flat_params(components.build(name, cfg, seed=seed + i)).items()}
        for path, value in flat.items():
            if path.endswith(("embedding_sum", "embed_sum")):
                flat[path] = rng.standard_normal(value.shape).astype(np.float32)
            elif path.endswith("cluster_usage"):
                flat[path] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        params[name] = flat
    return params


def build_demo_checkpoint(dst: str | os.PathLike, seed: int = 0) -> Path:
    """Write the demo checkpoint folder (official layout) at `dst`, atomically; returns `dst`."""
    return build_random_checkpoint(dst, *demo_configs(), seed=seed)


def released_configs(name: str = BASE_06B.name) -> tuple[dict, dict]:
    """The configs of a released model folder (`convert/assets/hf-configs/<name>`), for full-size
    random checkpoints (benchmarks)."""
    folder = BASE_06B.parent / name
    return (json.loads((folder / "config.json").read_text()),
            json.loads((folder / "speech_tokenizer" / "config.json").read_text()))


def build_random_checkpoint(dst: str | os.PathLike, main: dict, tok: dict, seed: int = 0) -> Path:
    """A random-weight checkpoint for the given configs, official layout, written atomically."""
    from qwen3tts_jax.config import Qwen3TTSConfig

    dst = Path(dst)
    tensors = to_source_tensors(random_params(Qwen3TTSConfig.from_hf_config(main, tok), seed))
    # pid + uuid: unique across containers sharing a cache (the server is PID 1 in each)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "speech_tokenizer").mkdir(parents=True)
    try:
        prefix = "speech_tokenizer."
        write_safetensors(tmp / "model.safetensors", {k: v for k, v in tensors.items() if not k.startswith(prefix)})
        write_safetensors(tmp / "speech_tokenizer" / "model.safetensors",
                          {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        (tmp / "config.json").write_text(json.dumps(main, indent=2))
        (tmp / "speech_tokenizer" / "config.json").write_text(json.dumps(tok, indent=2))
        for name in ("generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
                     "vocab.json", "merges.txt", "speech_tokenizer/preprocessor_config.json"):
            shutil.copyfile(BASE_06B / name, tmp / name)
        (tmp / "DEMO.txt").write_text("Random weights: this checkpoint makes noise, not speech.\n")
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
