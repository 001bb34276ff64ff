"""The reference pass in micro-batches bounded by mask size, with the stage's bool prefix-shared masks: every sum
unchanged up to float rounding where the padding changes. (The bool mask itself: tests/test_simpo_collators.py.)"""

import datasets
import pytest
import torch

from rutune.train import reference
from rutune.train.pref_batch import collate_pairs, forward_logps
from rutune.train.reference import compute_reference, micro_batches, pair_widths

PAD = 0


def test_micro_batches_split_by_pair_count_and_by_mask_elements():
    # four short pairs: only the pair count limits (batch 3)
    assert micro_batches([(10, 1)] * 4, batch_size=3, budget=10_000) == [(0, 3), (3, 4)]
    # 1 × 50² = 2,500 fits a 6,000 budget; adding a width-40 pair → 2 × 50² = 5,000 fits; a third → 7,500 does not
    assert micro_batches([(50, 1), (40, 1), (30, 1), (80, 1)], batch_size=8, budget=6_000) == [(0, 2), (2, 3), (3, 4)]
    # a pair bigger than the budget alone still runs, alone
    assert micro_batches([(10, 1), (200, 1), (10, 1)], batch_size=8, budget=1_000) == [(0, 1), (1, 2), (2, 3)]
    # concat pairs are two rows each: 2 × 2 × 20² = 1,600 > 1,000
    assert micro_batches([(20, 2), (20, 2)], batch_size=8, budget=1_000) == [(0, 1), (1, 2)]
    assert micro_batches([], batch_size=4) == []


def test_pair_widths_follow_each_layout():
    ds = datasets.Dataset.from_list([{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
                                     {"prompt_ids": [7], "chosen_ids": [8], "rejected_ids": [9, 10]}])
    assert pair_widths(ds, "prefix_shared") == [(3 - 1 + 2 + 1, 1), (1 - 1 + 1 + 2, 1)]
    assert pair_widths(ds, "concat") == [(3 + 2, 2), (1 + 2, 2)]
    assert pair_widths(ds, "packed") == [(0, 1), (0, 1)]


@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool])
def test_reference_pass_in_single_pair_micro_batches_equals_the_full_batch(tiny_model_dir, monkeypatch, mask_dtype):
    """Budget 1 forces one pair per forward (no padding); the sums equal a 4-pair batch's to float rounding, and the
    bool mask gives bit-identical sums to the float one in the same batches."""
    from rutune.train.model_setup import load_stage_model

    g = torch.Generator().manual_seed(3)
    rows = [{"prompt_ids": torch.randint(5, 4000, (int(n),), generator=g).tolist(),
             "chosen_ids": torch.randint(5, 4000, (int(c),), generator=g).tolist(),
             "rejected_ids": torch.randint(5, 4000, (int(r),), generator=g).tolist()}
            for n, c, r in torch.randint(2, 60, (6, 3), generator=g)]
    ds = datasets.Dataset.from_list(rows)
    model = load_stage_model(str(tiny_model_dir))
    collate = lambda f: collate_pairs(f, batching="prefix_shared", pad_id=PAD, mask_dtype=mask_dtype)  # noqa: E731
    cpu = torch.device("cpu")
    full = compute_reference(model, ds, collate, batch_size=4, batching="prefix_shared", device=cpu)
    float_full = compute_reference(model, ds, lambda f: collate_pairs(f, batching="prefix_shared", pad_id=PAD),
                                   batch_size=4, batching="prefix_shared", device=cpu)
    assert torch.equal(full, float_full)
    monkeypatch.setattr(reference, "REFERENCE_MASK_ELEMENTS", 1)
    sizes = []
    counting = lambda f: sizes.append(len(f)) or collate(f)  # noqa: E731
    single = compute_reference(model, ds, counting, batch_size=4, batching="prefix_shared", device=cpu)
    assert sizes == [1] * 6
    torch.testing.assert_close(single, full, atol=1e-4, rtol=1e-6)
    # and each sum is the plain forward of that pair alone
    one = collate(rows[:1])
    _, lp = forward_logps(model.eval(), one, "prefix_shared")
    assert single[0, 0].item() == pytest.approx(lp.sum[0].item(), abs=1e-9)
