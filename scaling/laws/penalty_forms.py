"""The quantisation penalty law's forms and constants: which terms each candidate law has.

The law itself, and how it is fitted, is described in :mod:`scaling.laws.quant_penalty`. This
module holds what the fit, the design and the card all read: the parameter names (:data:`PARAMS`,
in the order of a parameter vector ``theta``), their bounds, the reference size ``N0`` and data
``D0``, and the candidate forms (:data:`FORMS`).
"""

from __future__ import annotations

from dataclasses import dataclass

LOSS_UNIT = "nats/byte"
N0 = 1e5  # active parameters at which C is read
D0 = 2e6  # training tokens at which C is read (20 per parameter at N0)
ASINH_SCALE = 1e-3  # nats/byte: penalties below this are noise-level on the proxies' windows
SPAN = 1.5  # a size or data exponent needs values spanning at least this factor
PART_COLUMNS = ("share", "quantised", "bits", "group", "asym", "mlp", "expert", "tokens")

PARAMS = (
    "log_C", "log_mlp", "log_expert", "log_gptq", "beta_bits", "gamma_group", "log_asym", "gamma_N", "gamma_D",
)  # fmt: skip
REPORTED = (
    "C", "mlp_factor", "expert_factor", "gptq_factor", "beta_bits", "gamma_group", "asym_factor", "gamma_N", "gamma_D",
)  # fmt: skip
BOUNDS = {
    "log_C": (-25.0, 5.0),
    "log_mlp": (-10.0, 10.0),
    "log_expert": (-10.0, 10.0),
    "log_gptq": (-10.0, 10.0),
    "beta_bits": (0.0, 15.0),
    "gamma_group": (-5.0, 5.0),
    "log_asym": (-10.0, 10.0),
    "gamma_N": (-5.0, 5.0),
    "gamma_D": (-5.0, 5.0),
}


@dataclass(frozen=True)
class PenaltyForm:
    """One candidate law: which terms it has."""

    name: str
    relative: bool = True
    bits: str = "exp"  # "exp": exp(-beta (b-4));  "power": (b/4)^-beta
    size: bool = True  # the (N/N0)^-gamma_N term
    data: bool = True  # the (D/D0)^gamma_D term
    expert_tokens: bool = False  # routed experts count the D k / E tokens each one saw
    expert_factor: bool = False  # routed experts get their own factor beside the MLP one
    description: str = ""
    tokens_unit: str = "bytes"  # what D counts: the proxies' bytes, or the published models' tokens
    size_params: str = "active"  # which count the size term reads: active or total parameters


FORMS = {
    form.name: form
    for form in (
        PenaltyForm("relative", description="published: relative penalty, exponential in bits, N and D powers"),
        PenaltyForm("absolute", relative=False, description="Kumar et al. 2024's post-training term, absolute"),
        PenaltyForm("relative_power_bits", bits="power", description="bits as a power law instead"),
        PenaltyForm("relative_no_size", size=False, data=False, description="no size or data dependence"),
        PenaltyForm("relative_no_data", data=False, description="size but no data dependence"),
        PenaltyForm("relative_expert_tokens", expert_tokens=True, description="experts see D k/E tokens each"),
        PenaltyForm("relative_expert_factor", expert_factor=True, description="routed experts' own sensitivity"),
        PenaltyForm(
            "relative_expert_factor_no_data",
            expert_factor=True,
            data=False,
            description="routed experts' own sensitivity, size but no data dependence",
        ),
        PenaltyForm(
            "relative_expert_factor_no_size",
            expert_factor=True,
            size=False,
            data=False,
            description="routed experts' own sensitivity, no size or data dependence",
        ),
    )
}
PROXY_FORMS = tuple(FORMS)
# The law fitted on published PTQ rows (scaling.laws.ptq_law), as the card evaluates it: D in tokens
PUBLISHED = {"kumar": {}, "ouyang": {"bits": "power"}, "tokens_per_param": {}, "size_only": {"data": False}}
FORMS |= {
    f"ptq_{name}" + ("_total" if size == "total" else ""): PenaltyForm(
        f"ptq_{name}" + ("_total" if size == "total" else ""),
        expert_factor=True,
        tokens_unit="tokens",
        size_params=size,
        description=f"published PTQ rows, {name} form, N = {size} parameters (scaling.laws.ptq_law)",
        **options,
    )
    for name, options in PUBLISHED.items()
    for size in ("active", "total")
}
DEFAULT_FORM = "relative"
