"""SMPO (Vikhr effective_llm_alignment @ c48ca29) against values computed by hand.

Fixture (β = 1.2, m = 0.35), per pair: completion sums S and lengths |C|, means M = S/|C|, D = M_c − M_r.
  pair 1: S_c = −2 (|C| 4) → M_c = −0.5; S_r = −3 (|C| 2) → M_r = −1.5; D = 1.0  → u = β(D − m) = 0.78
  pair 2: S_c = −3 (|C| 2) → M_c = −1.5; S_r = −1.4 (|C| 1) → M_r = −1.4; D = −0.1 → u = −0.54
  NLL chosen = (2 + 3) / (4 + 2) = 5/6; NLL rejected = (3 + 1.4) / (2 + 1) = 4.4/3 (token means over each half)
"""

import inspect
import math

import pytest
import torch

from rutune.train.losses import simpo_loss
from rutune.train.pref_losses import SMPO_VARIANTS, smpo_loss

U = (0.78, -0.54)
NLL_C, NLL_R = 5 / 6, 4.4 / 3


def sp(x):
    return math.log1p(math.exp(x))


def args(requires_grad=False):
    return (torch.tensor([-2.0, -3.0], requires_grad=requires_grad), torch.tensor([4, 2]),
            torch.tensor([-3.0, -1.4], requires_grad=requires_grad), torch.tensor([2, 1]))


@pytest.mark.parametrize("variant, per_pair", [
    ("sigmoid", [sp(-0.78), sp(0.54)]),  # −log σ(u)
    ("hinge", [0.0, 0.54]),  # max(0, −u)
    ("ipo", [0.78**2, 0.54**2]),  # u², symmetric: also penalises overshooting the margin
    ("smooth_lower_bound", [0.0, 0.54**2]),  # max(0, −u)²
])
def test_each_variant_pair_term_and_total(variant, per_pair):
    out = smpo_loss(*args(), beta=1.2, target_margin=0.35, chosen_sft_ratio=0.8, variant=variant)
    assert out.pair_losses.tolist() == pytest.approx(per_pair, abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(per_pair) / 2 + 0.8 * NLL_C + 0.2 * NLL_R, abs=1e-6)


def test_defaults_are_vikhr_head_defaults():
    params = inspect.signature(smpo_loss).parameters
    assert {k: params[k].default for k in ("beta", "target_margin", "chosen_sft_ratio", "variant")} == {
        "beta": 1.2, "target_margin": 0.35, "chosen_sft_ratio": 0.8, "variant": "smooth_lower_bound"}
    out = smpo_loss(*args())
    # smooth_lower_bound: (0 + 0.2916)/2 + 0.8·5/6 + 0.2·4.4/3
    assert out.loss.item() == pytest.approx(0.1458 + 2 / 3 + 0.88 / 3, abs=1e-6)
    assert out.loss.item() == pytest.approx(1.1058, abs=1e-6)


def test_sft_terms_are_token_means_per_half_weighted_rho_and_one_minus_rho():
    out = smpo_loss(*args())
    assert out.extra["nll_chosen"].item() == pytest.approx(NLL_C)  # not the mean of per-pair means (0.625)
    assert out.extra["nll_rejected"].item() == pytest.approx(NLL_R)  # not (0.75 + 1.4)/2 = 1.075
    only_chosen = smpo_loss(*args(), chosen_sft_ratio=1.0).loss - smpo_loss(*args()).pair_losses.mean()
    only_rejected = smpo_loss(*args(), chosen_sft_ratio=0.0).loss - smpo_loss(*args()).pair_losses.mean()
    assert only_chosen.item() == pytest.approx(NLL_C, abs=1e-6)
    assert only_rejected.item() == pytest.approx(NLL_R, abs=1e-6)  # ρ = 0 still trains the rejected answers


def test_rewards_are_beta_times_mean_logps():
    out = smpo_loss(*args())
    assert out.rewards_chosen.tolist() == pytest.approx([-0.6, -1.8])
    assert out.rewards_rejected.tolist() == pytest.approx([-1.8, -1.68])


def test_gradient_matches_hand_derivative():
    c, cl, r, rl = args(requires_grad=True)
    smpo_loss(c, cl, r, rl).loss.backward()
    # pair 1 reached the margin: only the SFT terms, ρ·(−1/Σ|C_c|) and (1−ρ)·(−1/Σ|C_r|)
    # pair 2: d/dM_c of max(0, −u)² / 2 = 2·0.54·(−β)/2 = −0.648, and dM_c/dS_c = 1/2
    assert c.grad.tolist() == pytest.approx([-0.8 / 6, -0.648 / 2 - 0.8 / 6], abs=1e-6)
    assert r.grad.tolist() == pytest.approx([-0.2 / 3, 0.648 / 1 - 0.2 / 3], abs=1e-6)


def test_sigmoid_variant_term_is_simpo_with_gamma_beta_times_margin():
    """Cross-check with the TRL-parity-tested SimPO: its loss without SFT = SMPO sigmoid's margin term."""
    simpo = simpo_loss(*args(), beta=1.2, gamma=1.2 * 0.35)
    smpo = smpo_loss(*args(), variant="sigmoid")
    assert smpo.pair_losses.mean().item() == pytest.approx(simpo.loss.item(), abs=1e-6)


def test_ipo_variant_is_zero_at_the_margin_not_trl_ipo():
    # D = m exactly: M_c = −0.5, M_r = −0.85 → u = 0; TRL's IPO would regress on 1/(2β) instead
    out = smpo_loss(torch.tensor([-1.0]), torch.tensor([2]), torch.tensor([-0.85]), torch.tensor([1]),
                    variant="ipo", chosen_sft_ratio=1.0)
    assert out.pair_losses.item() == pytest.approx(0.0, abs=1e-10)


def test_variants_table_is_the_upstream_head_set():
    assert set(SMPO_VARIANTS) == {"sigmoid", "hinge", "ipo", "smooth_lower_bound"}  # no smooth_double_bound


def test_rejects_unknown_variant_and_empty_responses():
    with pytest.raises(ValueError, match="unknown variant 'smooth_double_bound'"):
        smpo_loss(*args(), variant="smooth_double_bound")
    c, cl, r, _ = args()
    with pytest.raises(ValueError, match="empty response"):
        smpo_loss(c, cl, r, torch.tensor([2, 0]))
    with pytest.raises(ValueError, match="same length"):
        smpo_loss(c, cl, torch.tensor(-1.0), torch.tensor(1))
