"""Pure tensor functions for training losses. No Trainer, no config: tensors in, tensors out."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# ---- SFT section (owned by the SFT recipe) ----


def token_nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token negative log-likelihood over positions whose target is not -100.

    `logits` (..., vocab) and `targets` (...) are already aligned (logits at i score target i); computed in
    float32 whatever the model's dtype, so bf16 training does not lose the loss's low bits.
    """
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           reduction="sum")


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, num_trained_tokens: torch.Tensor | int) -> torch.Tensor:
    """Token-weighted mean NLL: the sum over this micro-batch divided by the trained tokens of the *global* batch.

    Dividing every micro-batch (and every process) by the same global count makes the accumulated gradient the
    gradient of one mean over all trained tokens, independent of how sequences were split into micro-batches.
    """
    return token_nll_sum(logits, targets) / num_trained_tokens


# ---- Preference section (owned by the SimPO recipe) ----


class SequenceLogps(NamedTuple):
    """Per-sequence log-probabilities: `sum` over the sequence's target tokens, `count` of those tokens."""

    sum: torch.Tensor
    count: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count


def token_logps(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """Log-probability (fp32) of each target token under `logits` (..., V); 0 where the target is ignored.

    `targets[..., t]` is the token that `logits[..., t, :]` predicts (already shifted). Computed as
    logit − logsumexp so that no (..., V) log-softmax tensor is kept beyond the one row reduction.
    """
    keep = targets != ignore_index
    safe = targets.masked_fill(~keep, 0)
    logits = logits.float()
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return (picked - torch.logsumexp(logits, dim=-1)) * keep


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    segment_ids: torch.Tensor | None = None,
    num_segments: int | None = None,
    ignore_index: int = -100,
) -> SequenceLogps:
    """Summed target log-probs and target counts per sequence (mean = sum / count).

    `labels` is aligned with `logits` (label t is what logit row t predicts; shift before calling).
    Without `segment_ids` each row is one sequence. With them (same shape as `labels`, −1 = none),
    tokens are summed per segment id 0..num_segments−1, so one row may hold several sequences —
    the prefix-shared layout puts a pair's chosen and rejected branches in one row.
    """
    per_token = token_logps(logits, labels, ignore_index=ignore_index)
    keep = labels != ignore_index
    if segment_ids is None:
        return SequenceLogps(per_token.sum(-1), keep.sum(-1))
    if num_segments is None:
        raise ValueError("sequence_logps: segment_ids needs num_segments")
    used = keep & (segment_ids >= 0)
    seg = segment_ids[used]
    sums = per_token.new_zeros(num_segments).index_add(0, seg, per_token[used])
    counts = torch.bincount(seg, minlength=num_segments)
    return SequenceLogps(sums, counts)


class SimpoOutput(NamedTuple):
    """The batch loss and per-pair quantities (detached) for metrics."""

    loss: torch.Tensor
    rewards_chosen: torch.Tensor
    rewards_rejected: torch.Tensor
    logps_chosen: torch.Tensor
    logps_rejected: torch.Tensor
    nll: torch.Tensor


def simpo_loss(
    chosen_logps_sum: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_logps_sum: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float,
    gamma: float,
    *,
    sft_weight: float = 0.0,
) -> SimpoOutput:
    """SimPO: mean over pairs of −log σ(β/|y_w|·log π(y_w|x) − β/|y_l|·log π(y_l|x) − γ), plus sft_weight·NLL.

    γ is the absolute reward margin (SimPO's gamma_beta_ratio = γ/β; TRL's simpo_gamma = γ). The optional
    SFT term is CPO's: the chosen responses' token-mean negative log-likelihood over the whole batch,
    Σ −log π(y_w) / Σ |y_w|, so `sft_weight` equals TRL's `cpo_alpha`.
    """
    if not beta > 0:
        raise ValueError(f"simpo_loss: beta must be > 0, got {beta}")
    if bool((chosen_len <= 0).any()) or bool((rejected_len <= 0).any()):
        raise ValueError("simpo_loss: every response needs at least one target token (got an empty response)")
    logps_chosen = chosen_logps_sum / chosen_len
    logps_rejected = rejected_logps_sum / rejected_len
    rewards_chosen = beta * logps_chosen
    rewards_rejected = beta * logps_rejected
    loss = -F.logsigmoid(rewards_chosen - rewards_rejected - gamma).mean()
    nll = -chosen_logps_sum.sum() / chosen_len.sum()
    if sft_weight:
        loss = loss + sft_weight * nll
    return SimpoOutput(
        loss,
        rewards_chosen.detach(),
        rewards_rejected.detach(),
        logps_chosen.detach(),
        logps_rejected.detach(),
        nll.detach(),
    )
