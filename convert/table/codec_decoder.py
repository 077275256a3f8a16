"""Speech tokenizer decoder keys (`speech_tokenizer.decoder.*`) -> `codec_decoder.*`.

The Flax module mirrors the reference names, so every target is the source path; only the
layouts change (conv, transposed conv and linear weights) and `weight` becomes `kernel`.
Transposed convs are stored in the block layout of `qwen3tts_jax.conv.blocks_kernel_from_torch`
(`(M, I, stride, O)`, M = kernel / stride), so the hot path never relayouts weights;
`convert.export` inverts it with `blocks_kernel_to_torch`.
"""

from qwen3tts_jax.convert.rule import CONV1D, IDENTITY, Ignore, Rule, Transform

from qwen3tts_jax.conv import blocks_kernel_from_torch


def _blocks(m: int) -> Transform:
    """torch ConvTranspose1d `(I, O, K)` with `K = m * stride` -> `(m, I, stride, O)`."""
    return Transform(f"conv_transpose1d_blocks{m}",
                     lambda a: blocks_kernel_from_torch(a, a.shape[2] // m),
                     lambda s: (m, s[0], s[2] // m, s[1]), rank=3)


_P = r"speech_tokenizer\.decoder\."
_T = "codec_decoder."

RULES = (
    # Codebooks stay EMA accumulators; the forward divides (REFERENCE-FACTS gotcha 15).
    Rule(_P + r"(quantizer\.rvq_(?:first|rest)\.vq\.layers\.\d+\._codebook\.(?:embedding_sum|cluster_usage))",
         _T + r"\1", IDENTITY),
    Rule(_P + r"(quantizer\.rvq_(?:first|rest)\.output_proj)\.weight", _T + r"\1.kernel", CONV1D),
    # Causal transposed convs: upsample.N.0 (kernel = stride) and decoder blocks (kernel = 2 stride).
    Rule(_P + r"(upsample\.\d+\.0\.conv)\.weight", _T + r"\1.kernel", _blocks(1)),
    Rule(_P + r"(decoder\.\d+\.block\.1\.conv)\.weight", _T + r"\1.kernel", _blocks(2)),
    # Causal convs: pre_conv, ConvNeXt depthwise, decoder.0 / decoder.6, residual-unit convs.
    Rule(_P + r"(pre_conv\.conv|upsample\.\d+\.1\.dwconv\.conv|decoder\.\d+\.conv"
         r"|decoder\.\d+\.block\.\d+\.conv[12]\.conv)\.weight", _T + r"\1.kernel", CONV1D),
    Rule(_P + r"(pre_transformer\.(?:input_proj|output_proj|layers\.\d+\.self_attn\.[qkvo]_proj"
         r"|layers\.\d+\.mlp\.(?:gate|up|down)_proj)|upsample\.\d+\.1\.pwconv[12])\.weight",
         _T + r"\1.weight"),
    # RMSNorm / LayerNorm weights, every bias, layer scales, ConvNeXt gamma, SnakeBeta alpha/beta.
    Rule(_P + r"(.+norm\.weight|.+\.bias|.+_layer_scale\.scale|upsample\.\d+\.1\.gamma"
         r"|.+\.(?:alpha|beta))", _T + r"\1", IDENTITY),
)

IGNORED = (
    Ignore(_P + r"quantizer\.rvq_(?:first|rest)\.input_proj\.weight",
           "encoder-side projection into the codebook space; decoding only looks codes up"),
)
