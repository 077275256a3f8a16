"""Code predictor (MTP) parity with the reference, through the real converter."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
import torch

import qwen3tts_jax
from tests.helpers import rel_err, to_numpy

TOL = 1e-5


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa4", "tiny-proj"])
@pytest.mark.parametrize("seed", [0, 1])
def test_logits_of_all_15_heads_match(checkpoints, reference_of, preset, seed):
    hf, converted = checkpoints.get(preset, seed)
    ref = reference_of(hf).model.talker.code_predictor
    model = qwen3tts_jax.load(converted, ["code_predictor"]).code_predictor
    cfg = qwen3tts_jax.Qwen3TTSConfig.from_dir(converted)
    assert (model.small_to_mtp_projection is not None) == (preset == "tiny-proj")
    # Talker-width inputs: [past_hidden, C(c0), E_1(c1), ...], 16 positions as in one frame.
    x = torch.randn(3, 16, cfg.talker.hidden_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref_h = ref.model(inputs_embeds=ref.small_to_mtp_projection(x)).last_hidden_state
        ref_logits = [ref.lm_head[g - 1](ref_h) for g in range(1, 16)]
        ref_embeds = [ref.model.codec_embedding[g - 1](torch.arange(40)) for g in range(1, 16)]
    h, _ = model(jnp.asarray(x.numpy()), jnp.broadcast_to(jnp.arange(16), (3, 16)))
    for g in range(1, 16):
        assert rel_err(model.logits(h, g), to_numpy(ref_logits[g - 1])) < TOL, g
        assert rel_err(model.embed_group(g, jnp.arange(40)), to_numpy(ref_embeds[g - 1])) < TOL, g
