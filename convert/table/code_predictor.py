"""Code predictor (MTP) keys (`talker.code_predictor.*`)."""

from qwen3tts_jax.convert.rule import IDENTITY, Rule

_P = r"talker\.code_predictor"
_LAYER = _P + r"\.model\.layers\.(\d+)"

RULES = (
    Rule(_P + r"\.model\.codec_embedding\.(\d+)\.weight", r"code_predictor.codec_embedding.\1.embedding"),
    Rule(_LAYER + r"\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight",
         r"code_predictor.layers.\1.\2.weight"),
    Rule(_LAYER + r"\.(input_layernorm|post_attention_layernorm|self_attn\.[qk]_norm)\.weight",
         r"code_predictor.layers.\1.\2.weight", IDENTITY),
    Rule(_P + r"\.model\.norm\.weight", "code_predictor.norm.weight"),
    Rule(_P + r"\.lm_head\.(\d+)\.weight", r"code_predictor.lm_head.\1.weight"),
    # A real Linear only when the talker is wider than the predictor (1.7B); absent for 0.6B.
    Rule(_P + r"\.small_to_mtp_projection\.weight", "code_predictor.small_to_mtp_projection.weight"),
    Rule(_P + r"\.small_to_mtp_projection\.bias", "code_predictor.small_to_mtp_projection.bias"),
)
IGNORED = ()
