"""Speaker encoder keys (`speaker_encoder.*`, Base checkpoints only).

Every tensor is a Conv1d weight or bias, `fc` included (a k=1 Conv1d on the pooled
statistics), and the Flax modules mirror the reference names, so the only change is
`weight (O, I, K)` -> `kernel (K, I, O)`.
"""

from qwen3tts_jax.convert.rule import CONV1D, IDENTITY, Rule

_CONV = (r"speaker_encoder\.("
         r"blocks\.0\.conv"
         r"|blocks\.\d+\.(?:tdnn1|tdnn2)\.conv"
         r"|blocks\.\d+\.res2net_block\.blocks\.\d+\.conv"
         r"|blocks\.\d+\.se_block\.conv[12]"
         r"|mfa\.conv|asp\.tdnn\.conv|asp\.conv|fc)")

RULES = (
    Rule(_CONV + r"\.weight", r"speaker_encoder.\1.kernel", CONV1D),
    Rule(_CONV + r"\.bias", r"speaker_encoder.\1.bias", IDENTITY),
)
IGNORED = ()
