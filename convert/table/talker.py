"""Talker keys (`talker.model.*`, `talker.text_projection.*`, `talker.codec_head`)."""

from qwen3tts_jax.convert.rule import IDENTITY, Rule

_LAYER = r"talker\.model\.layers\.(\d+)"

RULES = (
    Rule(r"talker\.model\.text_embedding\.weight", "talker.text_embedding.embedding"),
    Rule(r"talker\.model\.codec_embedding\.weight", "talker.codec_embedding.embedding"),
    Rule(r"talker\.text_projection\.(linear_fc[12])\.weight", r"talker.text_projection.\1.weight"),
    Rule(r"talker\.text_projection\.(linear_fc[12])\.bias", r"talker.text_projection.\1.bias"),
    Rule(_LAYER + r"\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight",
         r"talker.layers.\1.\2.weight"),
    Rule(_LAYER + r"\.(input_layernorm|post_attention_layernorm|self_attn\.[qk]_norm)\.weight",
         r"talker.layers.\1.\2.weight", IDENTITY),
    Rule(r"talker\.model\.norm\.weight", "talker.norm.weight"),
    Rule(r"talker\.codec_head\.weight", "talker.codec_head.weight"),
)
IGNORED = ()
