"""On-device sampling in the reference's order, with per-row parameters as arrays.

Talker (codebook 0), as transformers 4.57.3 builds its processors for the reference:
repetition penalty over the generated c0 history -> min-new-tokens (EOS blocked) ->
suppress the control range except EOS -> temperature -> top-k -> top-p -> softmax -> draw.
Code predictor (codebooks 1..15): temperature -> top-k -> top-p -> draw.
Greedy rows take the argmax after the penalty/suppress steps (the reference's do_sample=False
skips the warpers). All in float32. Changing a row's parameters never recompiles.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SamplingParams:
    """Per-row knobs, each an array `[B]`."""

    temperature: jax.Array
    top_k: jax.Array          # int32; <= 0 disables
    top_p: jax.Array
    greedy: jax.Array         # bool

    @classmethod
    def make(cls, batch: int, temperature=0.9, top_k=50, top_p=1.0, greedy=False) -> SamplingParams:
        return cls(jnp.full((batch,), temperature, jnp.float32), jnp.full((batch,), top_k, jnp.int32),
                   jnp.full((batch,), top_p, jnp.float32), jnp.full((batch,), greedy, jnp.bool_))


def _top_k_top_p(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask `logits [B, V]` outside the top-k (ties at the k-th value kept) and the top-p nucleus."""
    v = logits.shape[-1]
    desc = -jnp.sort(-logits, axis=-1)
    k = jnp.where((top_k <= 0) | (top_k > v), v, top_k)
    kth = jnp.take_along_axis(desc, (k - 1)[:, None], axis=-1)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
    # Top-p as transformers does it: drop the low tail whose cumulative mass is <= 1 - top_p,
    # always keeping the most likely token. top_p >= 1 keeps everything (no processor there).
    asc = jnp.sort(logits, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(asc, axis=-1), axis=-1)
    drop = cum <= (1.0 - top_p)[:, None]
    drop = drop.at[:, -1].set(False)
    threshold = jnp.min(jnp.where(drop, jnp.inf, asc), axis=-1, keepdims=True)
    keep_all = (top_p >= 1.0)[:, None]
    return jnp.where(keep_all | (logits >= threshold), logits, -jnp.inf)


# Rows whose top_k is in 1..CANDIDATES sample among `lax.top_k` candidates (exact: every
# other id is masked by top-k anyway). A full-vocabulary sort is only needed when some row
# disables top-k or asks for more: XLA's CPU sort costs ~0.6 ms per 2048-wide row, and a
# frame samples 16 times, so the sort would dominate a batched step.
CANDIDATES = 128


def _draw_candidates(logits: jax.Array, params: SamplingParams, keys: jax.Array) -> jax.Array:
    vals, idx = jax.lax.top_k(logits, min(CANDIDATES, logits.shape[-1]))   # descending
    k = jnp.clip(params.top_k, 1, vals.shape[-1])
    kth = jnp.take_along_axis(vals, (k - 1)[:, None], axis=-1)
    vals = jnp.where(vals < kth, -jnp.inf, vals)
    # top-p in descending order: keep a token while the mass strictly above it is < top_p
    # (transformers' "cumulative ascending mass <= 1 - top_p is removed", restated).
    probs = jax.nn.softmax(vals, axis=-1)
    above = jnp.cumsum(probs, axis=-1) - probs
    keep = (above < params.top_p[:, None]) | (params.top_p >= 1.0)[:, None]
    vals = jnp.where(keep, vals, -jnp.inf)
    choice = jax.vmap(jax.random.categorical)(keys, vals)
    return jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0]


def _draw_full(logits: jax.Array, params: SamplingParams, keys: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.categorical)(keys, _top_k_top_p(logits, params.top_k, params.top_p))


def draw(logits: jax.Array, params: SamplingParams, keys: jax.Array) -> jax.Array:
    """Warp and sample one id per row from float32 `logits [B, V]`; `keys [B]` typed PRNG keys."""
    greedy_ids = jnp.argmax(logits, axis=-1)
    t = jnp.where(params.greedy, 1.0, params.temperature)[:, None]
    warped = logits / t
    few = (params.top_k >= 1) & (params.top_k <= min(CANDIDATES, logits.shape[-1]))
    sampled = jax.lax.cond(jnp.all(few | params.greedy), _draw_candidates, _draw_full, warped, params, keys)
    return jnp.where(params.greedy, greedy_ids, sampled).astype(jnp.int32)


def talker_logits_processors(logits: jax.Array, history: jax.Array, penalty: jax.Array,
                             eos_blocked: jax.Array, eos_id: int, suppress_start: int) -> jax.Array:
    """Repetition penalty, min-new-tokens and suppression on `logits [B, V]` (float32).

    `history [B, V]` marks the c0 ids generated so far (each id penalised once, no window);
    `eos_blocked [B]` while fewer than 2 tokens have been generated; ids `suppress_start..V-1`
    except EOS are never sampled.
    """
    p = penalty[:, None]
    penalised = jnp.where(logits < 0, logits * p, logits / p)
    logits = jnp.where(history, penalised, logits)
    ids = jnp.arange(logits.shape[-1])
    logits = jnp.where(eos_blocked[:, None] & (ids == eos_id)[None], -jnp.inf, logits)
    suppressed = (ids >= suppress_start) & (ids != eos_id)
    return jnp.where(suppressed[None], -jnp.inf, logits)
