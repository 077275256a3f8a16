"""Talker parity with the reference on the same random weights, through the real converter."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import qwen3tts_jax
from tests.helpers import rel_err, to_numpy

PRESETS = ["tiny", "tiny-gqa4", "tiny-proj"]
TOL = 1e-5


def _positions(b, t):
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("seed", [0, 1])
def test_hidden_states_and_logits_match_for_random_embeddings(checkpoints, reference_of, preset, seed):
    hf, converted = checkpoints.get(preset, seed)
    ref = reference_of(hf).model.talker
    model = qwen3tts_jax.load(converted, ["talker"]).talker
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(2, 23, model.codec_head.weight.shape[1], generator=gen)
    with torch.no_grad():
        ref_h = ref.model(inputs_embeds=x).last_hidden_state
        ref_logits = ref.codec_head(ref_h)
    h, _ = model(jnp.asarray(x.numpy()), _positions(2, 23))
    assert rel_err(h, to_numpy(ref_h)) < TOL
    assert rel_err(model.logits(h), to_numpy(ref_logits)) < TOL


def test_long_sequence(checkpoints, reference_of):
    hf, converted = checkpoints.get("tiny", 0)
    ref = reference_of(hf).model.talker
    model = qwen3tts_jax.load(converted, ["talker"]).talker
    x = torch.randn(1, 700, model.codec_head.weight.shape[1], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref_logits = ref.codec_head(ref.model(inputs_embeds=x).last_hidden_state)
    h, _ = model(jnp.asarray(x.numpy()), _positions(1, 700))
    assert rel_err(model.logits(h), to_numpy(ref_logits)) < TOL


@pytest.mark.parametrize("preset", ["tiny", "tiny-proj"])
def test_text_and_codec_embedding_sequence(checkpoints, reference_of, preset):
    """A prompt-like sequence: P(text ids) + C(codec ids), summed row by row."""
    hf, converted = checkpoints.get(preset, 0)
    ref = reference_of(hf).model.talker
    model = qwen3tts_jax.load(converted, ["talker"]).talker
    rng = np.random.default_rng(3)
    text = rng.integers(0, 151936, size=(1, 19))
    codec = rng.integers(0, 3072, size=(1, 19))
    with torch.no_grad():
        t_text, t_codec = torch.from_numpy(text), torch.from_numpy(codec)
        ref_x = ref.text_projection(ref.model.text_embedding(t_text)) + ref.model.codec_embedding(t_codec)
        ref_h = ref.model(inputs_embeds=ref_x).last_hidden_state
        ref_logits = ref.codec_head(ref_h)
    x = model.embed_text(jnp.asarray(text)) + model.embed_codec(jnp.asarray(codec))
    assert rel_err(x, to_numpy(ref_x)) < TOL
    h, _ = model(x, _positions(1, 19))
    assert rel_err(h, to_numpy(ref_h)) < TOL
    assert rel_err(model.logits(h), to_numpy(ref_logits)) < TOL


def test_cached_decode_equals_full_forward(checkpoints):
    """Prefill into a preallocated cache, then one token at a time: same as one causal pass,
    with rows of different lengths in one batch."""
    from qwen3tts_jax.kv_cache import KVCache

    _, converted = checkpoints.get("tiny-gqa4", 0)
    model = qwen3tts_jax.load(converted, ["talker"]).talker
    cfg = qwen3tts_jax.Qwen3TTSConfig.from_dir(converted).talker
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 12, cfg.hidden_size)), jnp.float32)
    full, _ = model(x, _positions(2, 12))
    cache = KVCache.zeros(cfg.num_hidden_layers, 2, 16, cfg.num_key_value_heads, cfg.head_dim)
    # Row 0 prefills 5 tokens, row 1 prefills 7 (both padded to a bucket of 8; padding is garbage).
    lengths = np.array([5, 7])
    pad = jnp.where(jnp.arange(8)[None, :, None] < lengths[:, None, None], x[:, :8], 123.0)
    h, cache = model(pad, _positions(2, 8), cache, jnp.zeros(2, jnp.int32))
    for b in range(2):
        assert rel_err(h[b, :lengths[b]], full[b, :lengths[b]]) < TOL
    for step in range(4):
        idx = jnp.asarray(lengths + step, jnp.int32)
        xs = jnp.stack([x[b, lengths[b] + step] for b in range(2)])[:, None]
        h, cache = model(xs, idx[:, None], cache, idx)
        for b in range(2):
            assert rel_err(h[b, 0], full[b, lengths[b] + step]) < TOL
