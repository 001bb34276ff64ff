"""DPO-family and ORPO losses (`rutune.train.pref_losses`) against values computed by hand.

Fixture (β = 0.5 unless stated), per pair: policy sums S, completion lengths |C|, reference sums S_ref.
  pair 1: S_c = −4 (|C| 2), S_r = −9 (|C| 3), S_ref_c = −5, S_ref_r = −8 → r_c = 1, r_r = −1, Δ = 2,  βΔ = 1
  pair 2: S_c = −3 (|C| 3), S_r = −2 (|C| 1), S_ref_c = −3, S_ref_r = −3 → r_c = 0, r_r = 1,  Δ = −1, βΔ = −0.5
"""

import inspect
import math

import pytest
import torch

from rutune.train.pref_losses import (apo_zero_loss, completion_nll, dpo_hinge_loss, dpo_sigmoid_loss,
                                      dpo_sigmoid_norm_loss, ipo_loss, log1mexp, orpo_loss, robust_dpo_loss)

BETA = 0.5
Z = (1.0, -0.5)  # βΔ per pair


def sp(x):  # softplus = −log σ(−x)
    return math.log1p(math.exp(x))


def sig(x):
    return 1 / (1 + math.exp(-x))


def pairs(requires_grad=False):
    t = dict(chosen_logps_sum=torch.tensor([-4.0, -3.0], requires_grad=requires_grad), chosen_len=torch.tensor([2, 3]),
             rejected_logps_sum=torch.tensor([-9.0, -2.0], requires_grad=requires_grad),
             rejected_len=torch.tensor([3, 1]))
    return t, torch.tensor([-5.0, -3.0]), torch.tensor([-8.0, -3.0])


def call(fn, requires_grad=False, **kwargs):
    t, ref_c, ref_r = pairs(requires_grad)
    out = fn(t["chosen_logps_sum"], t["chosen_len"], t["rejected_logps_sum"], t["rejected_len"], ref_c, ref_r,
             **{"beta": BETA, **kwargs})
    return out, t


DPO_FAMILY = [dpo_sigmoid_loss, robust_dpo_loss, dpo_hinge_loss, ipo_loss, apo_zero_loss, dpo_sigmoid_norm_loss]


def test_dpo_sigmoid_hand_values_and_rewards():
    out, _ = call(dpo_sigmoid_loss)
    expected = (sp(-1.0) + sp(0.5)) / 2  # −log σ(z) = softplus(−z)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.6436693, abs=1e-6)
    assert out.pair_losses.tolist() == pytest.approx([sp(-1.0), sp(0.5)], abs=1e-6)
    assert out.rewards_chosen.tolist() == [0.5, 0.0]  # β·(S − S_ref), TRL's rewards/chosen
    assert out.rewards_rejected.tolist() == [-0.5, 0.5]


def test_cdpo_label_smoothing_hand_values():
    eps = 0.25
    out, _ = call(dpo_sigmoid_loss, label_smoothing=eps)
    per_pair = [(1 - eps) * sp(-z) + eps * sp(z) for z in Z]  # −(1−ε)logσ(z) − ε logσ(−z)
    assert out.pair_losses.tolist() == pytest.approx(per_pair, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.7061693, abs=1e-6)
    # identity: softplus(z) − softplus(−z) = z, so cDPO = DPO + ε·mean(βΔ); a sign slip on the ε term breaks it
    plain, _ = call(dpo_sigmoid_loss)
    assert (out.loss - plain.loss).item() == pytest.approx(eps * sum(Z) / 2, abs=1e-6)


def test_rpo_sft_term_is_token_mean_chosen_nll():
    plain, _ = call(dpo_sigmoid_loss)
    out, _ = call(dpo_sigmoid_loss, sft_weight=0.5)
    # chosen: 4 + 3 nats over 2 + 3 tokens = 1.4 (the mean of per-pair means would be (2 + 1) / 2 = 1.5)
    assert out.extra["nll"].item() == pytest.approx(1.4)
    assert (out.loss - plain.loss).item() == pytest.approx(0.5 * 1.4, abs=1e-6)
    assert plain.extra["nll"].item() == pytest.approx(1.4)  # reported even when not trained on


def test_dpo_sigmoid_gradient_matches_hand_derivative():
    out, t = call(dpo_sigmoid_loss, requires_grad=True, sft_weight=0.5)
    out.loss.backward()
    # d/dS_c of softplus(−z)/2 is −β·σ(−z)/2; the SFT term adds −α/Σ|C_c| = −0.5/5 to every chosen sum
    assert t["chosen_logps_sum"].grad.tolist() == pytest.approx(
        [-BETA * sig(-z) / 2 - 0.1 for z in Z], abs=1e-6)
    assert t["rejected_logps_sum"].grad.tolist() == pytest.approx([BETA * sig(-z) / 2 for z in Z], abs=1e-6)


def test_robust_dpo_hand_values_can_be_negative():
    eps = 0.25
    out, _ = call(robust_dpo_loss, label_smoothing=eps)
    per_pair = [((1 - eps) * sp(-z) - eps * sp(z)) / (1 - 2 * eps) for z in Z]  # flipped term enters with +logσ(−z)
    assert out.pair_losses.tolist() == pytest.approx(per_pair, abs=1e-6)
    assert out.pair_losses[0].item() == pytest.approx(-0.1867383, abs=1e-6)  # = softplus(−z) − ε·z/(1−2ε) < 0
    assert out.loss.item() == pytest.approx(0.5186693, abs=1e-6)
    plain, _ = call(dpo_sigmoid_loss)
    assert call(robust_dpo_loss, label_smoothing=0.0)[0].loss.item() == pytest.approx(plain.loss.item())


def test_hinge_hand_values_and_no_gradient_past_the_margin():
    out, t = call(dpo_hinge_loss, requires_grad=True, beta=0.75)  # βΔ = 1.5 and −0.75
    assert out.pair_losses.tolist() == pytest.approx([0.0, 1.75])
    assert out.loss.item() == pytest.approx(0.875)
    out.loss.backward()
    assert t["chosen_logps_sum"].grad.tolist() == pytest.approx([0.0, -0.75 / 2])
    assert t["rejected_logps_sum"].grad.tolist() == pytest.approx([0.0, 0.75 / 2])


def test_ipo_is_per_token_with_target_one_over_two_beta():
    out, _ = call(ipo_loss)
    # target 1/(2β) = 1; pair 1: 1/2 − (−1)/3 = 5/6; pair 2: 0/3 − 1/1 = −1
    per_pair = [(5 / 6 - 1) ** 2, (-1 - 1) ** 2]
    assert out.pair_losses.tolist() == pytest.approx(per_pair, abs=1e-6)
    assert out.loss.item() == pytest.approx(2.0138889, abs=1e-6)
    # the un-normalised form (summed log-ratios, pre-trl#1265) would give ((2 − 1)² + (−1 − 1)²)/2 = 2.5
    assert out.loss.item() != pytest.approx(2.5, abs=1e-3)


def test_apo_zero_hand_values_anchor_each_side():
    out, t = call(apo_zero_loss, requires_grad=True)
    # β·r_c = 0.5, 0 and β·r_r = −0.5, 0.5
    per_pair = [1 - sig(0.5) + sig(-0.5), 1 - sig(0.0) + sig(0.5)]
    assert out.pair_losses.tolist() == pytest.approx(per_pair, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.9387703, abs=1e-6)
    out.loss.backward()
    # each side moves on its own: d/dS_c = −β σ'(β r_c)/n, d/dS_r = +β σ'(β r_r)/n with σ' = σ(1 − σ)
    assert t["chosen_logps_sum"].grad.tolist() == pytest.approx(
        [-BETA * sig(x) * (1 - sig(x)) / 2 for x in (0.5, 0.0)], abs=1e-6)
    assert t["rejected_logps_sum"].grad.tolist() == pytest.approx(
        [BETA * sig(x) * (1 - sig(x)) / 2 for x in (-0.5, 0.5)], abs=1e-6)


def test_sigmoid_norm_divides_log_ratios_by_length():
    out, _ = call(dpo_sigmoid_norm_loss)
    per_pair = [sp(-BETA * 5 / 6), sp(-BETA * -1.0)]
    assert out.pair_losses.tolist() == pytest.approx(per_pair, abs=1e-6)
    assert out.loss.item() == pytest.approx((per_pair[0] + per_pair[1]) / 2, abs=1e-6)
    assert out.loss.item() != pytest.approx(call(dpo_sigmoid_loss)[0].loss.item(), abs=1e-3)


def test_completion_nll_is_token_mean_not_mean_of_means():
    assert completion_nll(torch.tensor([-6.0, -1.0]), torch.tensor([3, 1])).item() == pytest.approx(7 / 4)


@pytest.mark.parametrize("fn", DPO_FAMILY, ids=lambda f: f.__name__)
def test_dpo_family_rejects_empty_responses(fn):
    t, ref_c, ref_r = pairs()
    with pytest.raises(ValueError, match="empty response"):
        fn(t["chosen_logps_sum"], t["chosen_len"], t["rejected_logps_sum"], torch.tensor([3, 0]), ref_c, ref_r)


@pytest.mark.parametrize("fn", DPO_FAMILY, ids=lambda f: f.__name__)
def test_dpo_family_rejects_mismatched_shapes(fn):
    """A 0-d reference (or the whole 2n-row `lp.sum` passed for one side) would broadcast into a wrong loss."""
    t, ref_c, _ = pairs()
    with pytest.raises(ValueError, match="same length"):
        fn(t["chosen_logps_sum"], t["chosen_len"], t["rejected_logps_sum"], t["rejected_len"], ref_c,
           torch.tensor(-3.0))


@pytest.mark.parametrize("fn", DPO_FAMILY, ids=lambda f: f.__name__)
def test_dpo_family_default_beta_is_trls(fn):
    assert inspect.signature(fn).parameters["beta"].default == 0.1  # DPOConfig.beta


def test_outputs_are_detached_except_loss():
    out, _ = call(dpo_sigmoid_loss, requires_grad=True, sft_weight=1.0)
    assert out.loss.requires_grad
    assert not any(t.requires_grad for t in (out.rewards_chosen, out.rewards_rejected, out.pair_losses,
                                             *out.extra.values()))


# ---- ORPO ----


def log1m_exp(m):  # float64 reference, one formula everywhere: float64 has the digits float32 lacks near 0
    return math.log1p(-math.exp(m))


def test_orpo_hand_values():
    # pair 1: M_c = −1/2 = −0.5, M_r = −6/3 = −2; pair 2: M_c = −0.9, M_r = −0.6/2 = −0.3 (rejected more likely)
    beta = 0.25
    out = orpo_loss(torch.tensor([-1.0, -0.9]), torch.tensor([2, 1]), torch.tensor([-6.0, -0.6]),
                    torch.tensor([3, 2]), torch.tensor([-8.0, -3.0]), torch.tensor([4, 1]), beta=beta)
    odds = [(mc - mr) - (log1m_exp(mc) - log1m_exp(mr)) for mc, mr in ((-0.5, -2.0), (-0.9, -0.3))]
    assert out.extra["log_odds"].tolist() == pytest.approx(odds, abs=1e-5)
    assert odds[0] > 0 > odds[1]
    # NLL over prompt + chosen tokens of the micro-batch: (8 + 3 + 1 + 0.9) / (4 + 1 + 2 + 1) = 12.9 / 8
    assert out.extra["nll"].item() == pytest.approx(1.6125, abs=1e-6)
    pair = [beta * sp(-x) for x in odds]  # −β·log σ(ℓ)
    assert out.pair_losses.tolist() == pytest.approx(pair, abs=1e-6)
    assert out.loss.item() == pytest.approx(1.6125 + sum(pair) / 2, abs=1e-6)
    assert out.rewards_chosen.tolist() == pytest.approx([-0.125, -0.225])  # β·M_c, as TRL logs them
    assert out.rewards_rejected.tolist() == pytest.approx([-0.5, -0.075])


def test_orpo_prompt_tokens_change_the_nll_only():
    args = (torch.tensor([-1.0]), torch.tensor([2]), torch.tensor([-6.0]), torch.tensor([3]))
    no_prompt = orpo_loss(*args, torch.tensor([0.0]), torch.tensor([0]))
    with_prompt = orpo_loss(*args, torch.tensor([-10.0]), torch.tensor([3]))
    assert no_prompt.extra["nll"].item() == pytest.approx(0.5)  # completion only: 1 nat / 2 tokens
    assert with_prompt.extra["nll"].item() == pytest.approx(11 / 5)
    assert with_prompt.pair_losses.item() == pytest.approx(no_prompt.pair_losses.item())


def test_log1mexp_is_accurate_at_both_ends():
    x = torch.tensor([-1e-7, -1e-3, -math.log(2), -2.0, -50.0])
    got = log1mexp(x).double()
    want = torch.tensor([log1m_exp(v) for v in x.double().tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)  # relative: −50 gives −1.9e−22, not 0
    naive = torch.log1p(-torch.exp(x[:1])).double()
    assert abs(naive.item() - want[0].item()) > 0.1  # float32 1 − e^x cancels near 0: the test can tell


def test_orpo_odds_term_is_stable_near_zero_log_prob():
    # chosen almost certain (M_c = −1e−7): log(1 − e^{M_c}) ≈ log(1e−7) must not cancel to garbage in float32
    out = orpo_loss(torch.tensor([-1e-7]), torch.tensor([1]), torch.tensor([-2.0]), torch.tensor([1]),
                    torch.tensor([0.0]), torch.tensor([0]), beta=1.0)
    want = (-1e-7 + 2.0) - (log1m_exp(-1e-7) - log1m_exp(-2.0))  # ≈ 17.97
    assert out.extra["log_odds"].item() == pytest.approx(want, rel=1e-5)
    assert out.pair_losses.item() == pytest.approx(sp(-want), rel=1e-3)
    chosen = torch.tensor([-1e-7], requires_grad=True)
    orpo_loss(chosen, torch.tensor([1]), torch.tensor([-2.0]), torch.tensor([1]), torch.tensor([0.0]),
              torch.tensor([0]), beta=1.0).loss.backward()
    assert torch.isfinite(chosen.grad).all()


def test_orpo_rejects_empty_responses_and_bad_prompt_counts():
    ok = (torch.tensor([-1.0]), torch.tensor([1]), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="empty response"):
        orpo_loss(*ok, torch.tensor([0]), torch.tensor([0.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="prompt_len"):
        orpo_loss(*ok, torch.tensor([1]), torch.tensor([0.0]), torch.tensor([-1]))
    assert inspect.signature(orpo_loss).parameters["beta"].default == 0.1  # ORPOConfig.beta (λ)

