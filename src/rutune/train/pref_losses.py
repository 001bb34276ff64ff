"""Preference objectives beyond SimPO (DPO family, ORPO, SMPO) as pure tensor functions: tensors in, tensors out.

Every function takes per-pair completion log-prob **sums** and token **counts**, as `losses.sequence_logps` gives
them (`lp.sum[:n], lp.count[:n]` for chosen, `lp.sum[n:], lp.count[n:]` for rejected), so the same code serves the
concatenated and the prefix-shared batch layouts. The reference-model objectives also take the reference sums
(same layout, computed without grad, or precomputed). Each returns a `PrefOutput`; formulas, defaults and the TRL
options each one matches are in docs/objectives.md. Hyperparameter ranges are checked by the config models, not here.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


class PrefOutput(NamedTuple):
    """`loss`: the micro-batch loss (scalar, differentiable). Everything else is detached, for metrics.

    `rewards_chosen` / `rewards_rejected`: per-pair implicit rewards as TRL logs them (β·(S − S_ref) for the
    reference objectives, β·mean log-prob for ORPO and SMPO). `pair_losses`: the per-pair preference term before the
    batch mean, without SFT/NLL terms. `extra`: objective-specific values keyed by metric name (see each function).
    """

    loss: torch.Tensor
    rewards_chosen: torch.Tensor
    rewards_rejected: torch.Tensor
    pair_losses: torch.Tensor
    extra: dict[str, torch.Tensor]


def _check_pairs(fn: str, *per_pair: torch.Tensor, counts: tuple[torch.Tensor, ...]) -> None:
    """Shapes must agree (a scalar would broadcast silently) and no response may be empty (its mean would be 0/0)."""
    shape = per_pair[0].shape
    if len(shape) != 1 or any(t.shape != shape for t in per_pair):
        raise ValueError(f"{fn}: per-pair inputs must all be 1-D of the same length, got "
                         f"{[tuple(t.shape) for t in per_pair]}")
    if any(bool((c <= 0).any()) for c in counts):
        raise ValueError(f"{fn}: every response needs at least one target token (got an empty response)")


def completion_nll(logps_sum: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood over a set of sequences: −Σ_i S_i / Σ_i |C_i| (one scalar).

    This is what `nn.CrossEntropyLoss()` over the micro-batch's masked labels gives, and what TRL's `"sft"` loss
    entry, CPO's NLL and SMPO's CE terms compute: long sequences weigh more than in a mean of per-sequence means.
    """
    return -logps_sum.sum() / counts.sum()


# ---- DPO family: reference-based, r(y) = S(y) − S_ref(y), Δ = r(y_c) − r(y_r) ----


def _dpo_logratios(fn, chosen_sum, chosen_len, rejected_sum, rejected_len, ref_chosen_sum, ref_rejected_sum):
    _check_pairs(fn, chosen_sum, chosen_len, rejected_sum, rejected_len, ref_chosen_sum, ref_rejected_sum,
                 counts=(chosen_len, rejected_len))
    return chosen_sum - ref_chosen_sum, rejected_sum - ref_rejected_sum


def _dpo_output(loss, pair, chosen_ratio, rejected_ratio, beta, extra=None) -> PrefOutput:
    return PrefOutput(loss, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach(), pair.detach(),
                      extra or {})


def dpo_sigmoid_loss(
    chosen_logps_sum: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_logps_sum: torch.Tensor,
    rejected_len: torch.Tensor,
    ref_chosen_logps_sum: torch.Tensor,
    ref_rejected_logps_sum: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
) -> PrefOutput:
    """DPO: mean over pairs of −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ), plus sft_weight · NLL(chosen completions).

    ε = `label_smoothing` > 0 is conservative DPO (cDPO: the label is assumed flipped with probability ε); ε = 0 is
    plain DPO and computes only the first term. The SFT term is RPO's: the chosen completions' token-mean NLL over the
    micro-batch (`completion_nll`), so `sft_weight` = α of TRL's `loss_type=["sigmoid", "sft"],
    loss_weights=[1, α]` (the old `rpo_alpha`). `extra["nll"]` is that NLL, computed whatever the weight.
    """
    cr, rr = _dpo_logratios("dpo_sigmoid_loss", chosen_logps_sum, chosen_len, rejected_logps_sum, rejected_len,
                            ref_chosen_logps_sum, ref_rejected_logps_sum)
    z = beta * (cr - rr)
    pair = -F.logsigmoid(z)
    if label_smoothing:
        pair = (1 - label_smoothing) * pair - label_smoothing * F.logsigmoid(-z)
    nll = completion_nll(chosen_logps_sum, chosen_len)
    loss = pair.mean()
    if sft_weight:
        loss = loss + sft_weight * nll
    return _dpo_output(loss, pair, cr, rr, beta, {"nll": nll.detach()})


def robust_dpo_loss(
    chosen_logps_sum: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_logps_sum: torch.Tensor,
    rejected_len: torch.Tensor,
    ref_chosen_logps_sum: torch.Tensor,
    ref_rejected_logps_sum: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PrefOutput:
    """Robust DPO (rDPO): mean over pairs of [−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)] / (1 − 2ε), ε ∈ [0, 0.5).

    Unlike cDPO the flipped term enters with a plus sign and the sum is rescaled, which makes the loss an unbiased
    estimate of the clean-label DPO loss under label noise of rate ε (ε = 0 is plain DPO).
    """
    cr, rr = _dpo_logratios("robust_dpo_loss", chosen_logps_sum, chosen_len, rejected_logps_sum, rejected_len,
                            ref_chosen_logps_sum, ref_rejected_logps_sum)
    z = beta * (cr - rr)
    eps = label_smoothing
    pair = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return _dpo_output(pair.mean(), pair, cr, rr, beta)


def dpo_hinge_loss(
    chosen_logps_sum: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_logps_sum: torch.Tensor,
    rejected_len: torch.Tensor,
    ref_chosen_logps_sum: torch.Tensor,
    ref_rejected_logps_sum: torch.Tensor,
    *,
    beta: float = 0.1,
) -> PrefOutput:
    """Hinge (SLiC-style): mean over pairs of max(0, 1 − βΔ); pairs with βΔ ≥ 1 give no gradient."""
    cr, rr = _dpo_logratios("dpo_hinge_loss", chosen_logps_sum, chosen_len, rejected_logps_sum, rejected_len,
                            ref_chosen_logps_sum, ref_rejected_logps_sum)
    pair = torch.relu(1 - beta * (cr - rr))
    return _dpo_output(pair.mean(), pair, cr, rr, beta)


def ipo_loss(
    chosen_logps_sum: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_logps_sum: torch.Tensor,
    rejected_len: torch.Tensor,
    ref_chosen_logps_sum: torch.Tensor,
    ref_rejected_logps_sum: torch.Tensor,
    *,
    beta: float = 0.1,
) -> PrefOutput:
    """IPO, per-token form: mean over pairs of (r(y_c)/|C_c| − r(y_r)/|C_r| − 1/(2β))², β playing the role of τ.

    The log-ratios are divided by the completion lengths (TRL's form since trl#1265, confirmed by the IPO authors),
    so the regression target 1/(2β) is per token (5 at β = 0.1) and the loss does not grow with response length.
    """
    cr, rr = _dpo_logratios("ipo_loss", chosen_logps_sum, chosen_len, rejected_logps_sum, rejected_len,
                            ref_chosen_logps_sum, ref_rejected_logps_sum)
    pair = (cr / chosen_len - rr / rejected_len - 1 / (2 * beta)) ** 2
    return _dpo_output(pair.mean(), pair, cr, rr, beta)


def apo_zero_loss(
    chosen_logps_sum: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_logps_sum: torch.Tensor,
    rejected_len: torch.Tensor,
    ref_chosen_logps_sum: torch.Tensor,
    ref_rejected_logps_sum: torch.Tensor,
    *,
    beta: float = 0.1,
) -> PrefOutput:
    """APO-zero: mean over pairs of [1 − σ(β·r(y_c))] + σ(β·r(y_r)).

    Anchored: pushes the chosen log-ratio up and the rejected one down independently (not only their difference),
    for data whose chosen answers are better than the model's own outputs.
    """
    cr, rr = _dpo_logratios("apo_zero_loss", chosen_logps_sum, chosen_len, rejected_logps_sum, rejected_len,
                            ref_chosen_logps_sum, ref_rejected_logps_sum)
    pair = (1 - torch.sigmoid(beta * cr)) + torch.sigmoid(beta * rr)
    return _dpo_output(pair.mean(), pair, cr, rr, beta)


def dpo_sigmoid_norm_loss(
    chosen_logps_sum: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_logps_sum: torch.Tensor,
    rejected_len: torch.Tensor,
    ref_chosen_logps_sum: torch.Tensor,
    ref_rejected_logps_sum: torch.Tensor,
    *,
    beta: float = 0.1,
) -> PrefOutput:
    """Length-normalised DPO: mean over pairs of −log σ(β·(r(y_c)/|C_c| − r(y_r)/|C_r|)).

    Still reference-based (not SimPO): the log-ratios are averaged per token so that long responses do not dominate
    Δ; β therefore needs to be much larger than plain DPO's for the same margin scale.
    """
    cr, rr = _dpo_logratios("dpo_sigmoid_norm_loss", chosen_logps_sum, chosen_len, rejected_logps_sum, rejected_len,
                            ref_chosen_logps_sum, ref_rejected_logps_sum)
    pair = -F.logsigmoid(beta * (cr / chosen_len - rr / rejected_len))
    return _dpo_output(pair.mean(), pair, cr, rr, beta)


# ---- ORPO: reference-free odds ratio + NLL over the full chosen sequence ----


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x ≤ 0, without cancellation at either end.

    For x < −ln 2, eˣ < 1/2 and log1p(−eˣ) is exact; near 0, 1 − eˣ cancels, so log(−expm1(x)) is used instead
    (e.g. x = −1e−7 in float32: log1p(−exp(x)) is off by ~0.17, this is exact).
    """
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    chosen_logps_sum: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_logps_sum: torch.Tensor,
    rejected_len: torch.Tensor,
    prompt_logps_sum: torch.Tensor,
    prompt_len: torch.Tensor,
    *,
    beta: float = 0.1,
) -> PrefOutput:
    """ORPO as TRL computes it: NLL(full chosen sequence) + mean over pairs of −β·log σ(ℓ_or).

    With M = S/|C| the completion-mean log-probs, ℓ_or = (M_c − M_r) − [log(1 − e^{M_c}) − log(1 − e^{M_r})] is
    the log odds ratio (odds = p/(1 − p), p = e^M), computed with `log1mexp`. β is ORPO's λ.

    The NLL covers the **prompt tokens too**, as TRL's `ORPOTrainer` does (trl#1516/#2527, following the ORPO
    authors' code): −(Σ S_prompt + Σ S_c) / (Σ |prompt| + Σ |C_c|) over the micro-batch, where `prompt_logps_sum`
    / `prompt_len` are, per pair, the summed log-probs and count of the prompt tokens that are predicted (every
    prompt token but the first). A caller gets them from a forward that keeps the prompt logits
    (`logits_to_keep=0`) by labelling the prompt targets as extra segments of `losses.sequence_logps`
    (see docs/objectives.md). `extra`: `nll` (that scalar) and `log_odds` (per-pair ℓ_or).
    """
    _check_pairs("orpo_loss", chosen_logps_sum, chosen_len, rejected_logps_sum, rejected_len, prompt_logps_sum,
                 prompt_len, counts=(chosen_len, rejected_len))
    if bool((prompt_len < 0).any()):
        raise ValueError("orpo_loss: prompt_len must be >= 0")
    mean_chosen = chosen_logps_sum / chosen_len
    mean_rejected = rejected_logps_sum / rejected_len
    log_odds = (mean_chosen - mean_rejected) - (log1mexp(mean_chosen) - log1mexp(mean_rejected))
    pair = -beta * F.logsigmoid(log_odds)
    nll = completion_nll(prompt_logps_sum + chosen_logps_sum, prompt_len + chosen_len)
    loss = nll + pair.mean()
    return PrefOutput(loss, (beta * mean_chosen).detach(), (beta * mean_rejected).detach(), pair.detach(),
                      {"nll": nll.detach(), "log_odds": log_odds.detach()})


# ---- SMPO (Vikhr effective_llm_alignment @ c48ca29): reference-free margin + chosen/rejected SFT ----

# Per-pair terms of u = β·(D − m), D = M_c − M_r; upstream `loss_type` names.
SMPO_VARIANTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": lambda u: -F.logsigmoid(u),
    "hinge": lambda u: torch.relu(-u),
    "ipo": lambda u: u**2,  # symmetric squared margin, not TRL's IPO target
    "smooth_lower_bound": lambda u: torch.relu(-u) ** 2,
}


def smpo_loss(
    chosen_logps_sum: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_logps_sum: torch.Tensor,
    rejected_len: torch.Tensor,
    *,
    beta: float = 1.2,
    target_margin: float = 0.35,
    chosen_sft_ratio: float = 0.8,
    variant: str = "smooth_lower_bound",
) -> PrefOutput:
    """SMPO: mean_i ℓ(β·(D_i − m)) + ρ·NLL(chosen completions) + (1 − ρ)·NLL(rejected completions).

    D = M_c − M_r on completion-mean log-probs (always length-normalised), m = `target_margin`, ρ =
    `chosen_sft_ratio`. ℓ by `variant` (u = β(D − m)): sigmoid −log σ(u); hinge max(0, −u); ipo u²;
    smooth_lower_bound max(0, −u)² (default: zero once the margin is reached, quadratic below it). Each NLL is the
    token mean over that half of the micro-batch (`completion_nll`), so with ρ < 1 the rejected answers are also
    trained towards higher likelihood, which keeps them from collapsing. The upstream clipping options are no-ops
    there and are not implemented (docs/objectives.md). `extra`: `nll_chosen`, `nll_rejected`.
    """
    if variant not in SMPO_VARIANTS:
        raise ValueError(f"smpo_loss: unknown variant {variant!r}; expected one of {sorted(SMPO_VARIANTS)}")
    _check_pairs("smpo_loss", chosen_logps_sum, chosen_len, rejected_logps_sum, rejected_len,
                 counts=(chosen_len, rejected_len))
    mean_chosen = chosen_logps_sum / chosen_len
    mean_rejected = rejected_logps_sum / rejected_len
    pair = SMPO_VARIANTS[variant](beta * (mean_chosen - mean_rejected - target_margin))
    nll_chosen = completion_nll(chosen_logps_sum, chosen_len)
    nll_rejected = completion_nll(rejected_logps_sum, rejected_len)
    loss = pair.mean()
    if chosen_sft_ratio:
        loss = loss + chosen_sft_ratio * nll_chosen
    if chosen_sft_ratio != 1:
        loss = loss + (1 - chosen_sft_ratio) * nll_rejected
    return PrefOutput(loss, (beta * mean_chosen).detach(), (beta * mean_rejected).detach(), pair.detach(),
                      {"nll_chosen": nll_chosen.detach(), "nll_rejected": nll_rejected.detach()})
