"""On-device sampling: the reference's processor order and semantics, per-row parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from qwen3tts_jax.sampling import SamplingParams, draw, talker_logits_processors


def _hf_processors(logits, penalty, generated, eos, suppress, temperature, top_k, top_p):
    """transformers' own processors, in the order the reference's talker `generate` builds them."""
    from transformers.generation import logits_process as lp

    procs = lp.LogitsProcessorList([
        lp.RepetitionPenaltyLogitsProcessor(penalty),
        lp.MinNewTokensLengthLogitsProcessor(0, 2, eos),
        lp.SuppressTokensLogitsProcessor(suppress),
        lp.TemperatureLogitsWarper(temperature),
        lp.TopKLogitsWarper(top_k),
        lp.TopPLogitsWarper(top_p),
    ])
    ids = torch.tensor([generated], dtype=torch.long)
    return procs(ids, torch.tensor(logits)[None].clone())[0].numpy()


def test_processors_match_transformers():
    rng = np.random.default_rng(0)
    v, eos = 3072, 2150
    logits = rng.standard_normal(v).astype(np.float32) * 3
    generated = [5, 17, 17, 2047, 100]
    history = np.zeros(v, bool)
    history[generated] = True
    suppress = [i for i in range(2048, 3072) if i != eos]
    want = _hf_processors(logits, 1.05, generated, eos, suppress, 0.9, 50, 0.8)
    got = talker_logits_processors(jnp.asarray(logits)[None], jnp.asarray(history)[None], jnp.asarray([1.05]),
                                   jnp.asarray([False]), eos, 2048)
    params = SamplingParams.make(1, temperature=0.9, top_k=50, top_p=0.8)
    from qwen3tts_jax.sampling import _top_k_top_p
    got = np.asarray(_top_k_top_p(got / 0.9, params.top_k, params.top_p))[0]
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = ~np.isinf(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6)


def test_code_predictor_warpers_match_transformers():
    """The code predictor only warps: temperature, top-k, top-p (no penalty, no suppression)."""
    from transformers.generation import logits_process as lp

    from qwen3tts_jax.sampling import _top_k_top_p

    logits = np.random.default_rng(1).standard_normal(2048).astype(np.float32) * 2
    for temperature, top_k, top_p in [(0.9, 50, 1.0), (0.7, 10, 0.8)]:
        procs = lp.LogitsProcessorList([lp.TemperatureLogitsWarper(temperature), lp.TopKLogitsWarper(top_k)]
                                       + ([lp.TopPLogitsWarper(top_p)] if top_p < 1 else []))
        want = procs(torch.zeros((1, 0), dtype=torch.long), torch.tensor(logits)[None])[0].numpy()
        params = SamplingParams.make(1, temperature, top_k, top_p)
        got = np.asarray(_top_k_top_p(jnp.asarray(logits)[None] / temperature, params.top_k, params.top_p))[0]
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        finite = ~np.isinf(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6)


def test_eos_blocked_and_control_ids_suppressed():
    logits = jnp.zeros((2, 3072)).at[:, 2150].set(50.0).at[:, 2200].set(60.0)
    out = talker_logits_processors(logits, jnp.zeros((2, 3072), bool), jnp.ones(2), jnp.asarray([True, False]),
                                   2150, 2048)
    assert np.isinf(out[0, 2150]) and out[1, 2150] == 50.0
    assert np.isinf(out[:, 2200]).all() and np.isinf(out[:, 2048:2150]).all()
    greedy = draw(out, SamplingParams.make(2, greedy=True), jax.random.split(jax.random.key(0), 2))
    assert int(greedy[1]) == 2150 and int(greedy[0]) < 2048


def test_top_k_keeps_ties_and_rows_have_their_own_parameters():
    logits = jnp.asarray([[5.0, 4.0, 4.0, 1.0, 0.0], [5.0, 4.0, 4.0, 1.0, 0.0]])
    params = SamplingParams(jnp.asarray([1.0, 1.0]), jnp.asarray([2, 0]), jnp.asarray([1.0, 1.0]),
                            jnp.asarray([False, False]))
    keys = jax.random.split(jax.random.key(1), 4000)
    draws = np.stack([np.asarray(draw(logits, params, jax.random.split(k, 2))) for k in keys[:400]])
    assert set(draws[:, 0]) == {0, 1, 2}           # top-2 with a tie at the 2nd value keeps 3 ids
    assert set(draws[:, 1]) >= {0, 1, 2, 3}        # top_k=0: no filter


def test_draws_follow_the_softmax():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    params = SamplingParams.make(1, temperature=1.0, top_k=0, top_p=1.0)
    keys = jax.random.split(jax.random.key(2), 6000)
    ids = jax.vmap(lambda k: draw(logits, params, k[None])[0])(keys)
    freq = np.bincount(np.asarray(ids), minlength=4) / 6000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.025)


def test_top_p_keeps_the_smallest_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    params = SamplingParams.make(1, temperature=1.0, top_k=0, top_p=0.7)
    keys = jax.random.split(jax.random.key(3), 2000)
    ids = np.asarray(jax.vmap(lambda k: draw(logits, params, k[None])[0])(keys))
    assert set(ids) == {0, 1}


def test_candidate_path_samples_the_same_distribution_as_the_full_sort():
    """Rows with 1 <= top_k <= CANDIDATES sample among lax.top_k candidates; rows that disable
    top-k take the full-vocabulary path. Both must give the same distribution."""
    from qwen3tts_jax.sampling import _draw_candidates, _draw_full

    rng = np.random.default_rng(5)
    logits = jnp.asarray(rng.standard_normal((1, 2048)) * 2, jnp.float32)
    for top_k, top_p in [(50, 1.0), (20, 0.6), (128, 0.9)]:
        params = SamplingParams.make(1, temperature=1.0, top_k=top_k, top_p=top_p)
        keys = jax.random.split(jax.random.key(top_k), 4000)
        fast = np.asarray(jax.jit(jax.vmap(lambda k, p=params: _draw_candidates(logits, p, k[None])[0]))(keys))
        full = np.asarray(jax.jit(jax.vmap(lambda k, p=params: _draw_full(logits, p, k[None])[0]))(keys))
        support = set(np.asarray(_allowed(logits[0], top_k, top_p)))
        assert set(fast) <= support and set(full) <= support
        f1 = np.bincount(fast, minlength=2048) / 4000
        f2 = np.bincount(full, minlength=2048) / 4000
        assert np.abs(f1 - f2).max() < 0.04, (top_k, top_p)


def _allowed(row, top_k, top_p):
    order = np.argsort(-np.asarray(row))[:top_k]
    p = np.exp(np.asarray(row)[order] - np.asarray(row)[order].max())
    p /= p.sum()
    above = np.cumsum(p) - p
    return order[above < top_p] if top_p < 1 else order
