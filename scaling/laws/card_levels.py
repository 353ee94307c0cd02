"""Constants that the law card and its text summary share (kept apart so neither imports the other)."""

LEVEL = 0.9  # the one interval level of every output of the card
QUANT_TERM = "quantization"
PENALTY_SHOWN = ("C", "mlp_factor", "expert_factor", "gptq_factor", "beta_bits", "gamma_N", "gamma_D")
