"""Speech tokenizer encoder (Mimi) keys (`speech_tokenizer.encoder.*`) -> `codec_encoder.*`.

Names mirror the reference, so the only changes are torch -> flax layouts and LayerNorm's
`weight` -> `scale`. The wrapper keeps `encoder_valid_num_quantizers` = 16 codes: the
semantic codebook plus acoustic codebooks 0..14. Acoustic codebooks 15..30 are stored but
never influence those 16 codes (each RVQ layer only sees the residual of the layers before
it), so they are ignored. The regexes fix that split at the 12 Hz family's 1 + 15; a config
with other counts fails loudly in the plan (unfilled or unknown targets), never silently.
"""

from qwen3tts_jax.convert.rule import CONV1D, IDENTITY, Ignore, Rule

_P = r"speech_tokenizer\.encoder"
_T = _P + r"\.encoder_transformer\.layers\.(\d+)"
_Q = _P + r"\.quantizer\.(semantic|acoustic)_residual_vector_quantizer"
_USED_ACOUSTIC = r"(?:\d|1[0-4])"  # acoustic layers 0..14
_UNUSED_ACOUSTIC = r"(?:1[5-9]|[2-9]\d|\d{3,})"  # 15 and up

RULES = (
    # SEANet: plain convs (`layers.N.conv`) and ResBlock convs (`layers.N.block.M.conv`).
    Rule(_P + r"\.encoder\.layers\.(\d+)\.((?:block\.\d+\.)?)conv\.weight",
         r"codec_encoder.encoder.layers.\1.\2conv.kernel", CONV1D),
    Rule(_P + r"\.encoder\.layers\.(\d+)\.((?:block\.\d+\.)?)conv\.bias",
         r"codec_encoder.encoder.layers.\1.\2conv.bias"),
    # Transformer.
    Rule(_T + r"\.(input_layernorm|post_attention_layernorm)\.weight",
         r"codec_encoder.encoder_transformer.layers.\1.\2.scale"),
    Rule(_T + r"\.(input_layernorm|post_attention_layernorm)\.bias",
         r"codec_encoder.encoder_transformer.layers.\1.\2.bias"),
    Rule(_T + r"\.(self_attn\.[qkvo]_proj|mlp\.fc[12])\.weight",
         r"codec_encoder.encoder_transformer.layers.\1.\2.weight"),
    Rule(_T + r"\.(self_attn_layer_scale|mlp_layer_scale)\.scale",
         r"codec_encoder.encoder_transformer.layers.\1.\2.scale", IDENTITY),
    # 25 Hz -> 12.5 Hz (no bias).
    Rule(_P + r"\.downsample\.conv\.weight", "codec_encoder.downsample.conv.kernel", CONV1D),
    # Split RVQ.
    Rule(_Q + r"\.input_proj\.weight",
         r"codec_encoder.quantizer.\1_residual_vector_quantizer.input_proj.kernel", CONV1D),
    Rule(_P + r"\.quantizer\.semantic_residual_vector_quantizer\.layers\.(\d+)\.codebook\."
         r"(embed_sum|cluster_usage)",
         r"codec_encoder.quantizer.semantic_residual_vector_quantizer.layers.\1.codebook.\2"),
    Rule(_P + r"\.quantizer\.acoustic_residual_vector_quantizer\.layers\.(" + _USED_ACOUSTIC
         + r")\.codebook\.(embed_sum|cluster_usage)",
         r"codec_encoder.quantizer.acoustic_residual_vector_quantizer.layers.\1.codebook.\2"),
)

IGNORED = (
    Ignore(_Q + r"\.output_proj\.weight",
           "Mimi's RVQ decode projection (codes -> latent); encoding never runs it"),
    Ignore(_Q + r"\.layers\.\d+\.codebook\.initialized",
           "k-means training flag; the codebook is embed_sum / clamp(cluster_usage) regardless"),
    Ignore(_P + r"\.quantizer\.acoustic_residual_vector_quantizer\.layers\." + _UNUSED_ACOUSTIC
           + r"\.codebook\.(?:embed_sum|cluster_usage)",
           "acoustic codebooks past encoder_valid_num_quantizers (16): the speech tokenizer "
           "drops their codes and they cannot affect the earlier ones"),
)
