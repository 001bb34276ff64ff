"""Parity with the peer: TRL 1.16 `trl.experimental.cpo.CPOTrainer(loss_type="simpo")` on the same model and pairs.

TRL tokenises the pairs itself (prompt rendered with the chat template, replies given as content + `<|im_end|>` so
it does not append a second one); our `tokenize_pair` must give the same token ids, and our loss (both batchings)
the same value (1e-5) and gradients (1e-4). With `sft_weight = α` it must equal `cpo_alpha = α`: TRL's NLL term is
the token-mean cross-entropy over all chosen tokens of the batch.
"""

import os
import tempfile

import pytest
import torch

from rutune.data.templates import tokenize_pair
from rutune.train.collators import collate_preference
from rutune.train.losses import sequence_logps, simpo_loss

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
BETA, GAMMA = 2.5, 1.375
PAIRS = [
    ([{"role": "user", "content": "Привет, как дела?"}], "Хорошо, спасибо!", "Не знаю."),
    ([{"role": "system", "content": "Ты помощник."}, {"role": "user", "content": "Столица России?"}],
     "Москва — столица России.", "Париж, конечно, это столица Франции."),
    ([{"role": "user", "content": "Сколько будет 2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "А 3+3?"}], "6", "Шесть или семь, не помню точно, давай посчитаем вместе ещё раз."),
]


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rows = [{"prompt": tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
             "chosen": c + "<|im_end|>", "rejected": r + "<|im_end|>"} for p, c, r in PAIRS]
    trainers = {}
    for alpha in (0.0, 0.5):
        args = CPOConfig(output_dir=tempfile.mkdtemp(), loss_type="simpo", cpo_alpha=alpha, beta=BETA,
                         simpo_gamma=GAMMA, max_length=512, report_to=[], use_cpu=True, disable_dropout=True,
                         per_device_train_batch_size=len(rows))
        trainers[alpha] = CPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                     processing_class=tok)
    ds = trainers[0.0].train_dataset
    trl_batch = trainers[0.0].data_collator([ds[i] for i in range(len(ds))])
    return tok, model, trainers, ds, trl_batch


def _grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def test_tokenize_pair_gives_trls_token_ids(setup):
    tok, _, _, ds, _ = setup
    for (prompt, chosen, rejected), row in zip(PAIRS, ds):
        ours = tokenize_pair(tok, prompt, chosen, rejected)
        n = len(row["prompt_input_ids"])
        assert ours.prompt_ids == row["prompt_input_ids"]
        assert ours.chosen_ids == row["chosen_input_ids"][n:]
        assert ours.rejected_ids == row["rejected_input_ids"][n:]
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        assert ours.chosen_ids.count(im_end) == 1 and ours.chosen_ids[-1] == im_end


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("batching", ["prefix_shared", "concat"])
def test_loss_and_gradients_equal_trl_cpo_simpo(setup, alpha, batching):
    tok, model, trainers, _, trl_batch = setup
    model.train()  # dropout is 0 in the tiny model; train mode is what both trainers run in
    model.zero_grad()
    trl_loss, trl_metrics = trainers[alpha].get_batch_loss_metrics(model, trl_batch)
    trl_loss.backward()
    trl_grads = _grads(model)

    model.zero_grad()
    pairs = [tokenize_pair(tok, p, c, r) for p, c, r in PAIRS]
    batch = collate_preference(pairs, batching=batching, pad_id=tok.pad_token_id)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False, logits_to_keep=batch["logits_to_keep"])
    n = batch["num_pairs"]
    lp = sequence_logps(out.logits, batch["target_ids"], segment_ids=batch["target_segment"], num_segments=2 * n)
    ours = simpo_loss(lp.sum[:n], lp.count[:n], lp.sum[n:], lp.count[n:], BETA, GAMMA, sft_weight=alpha)
    ours.loss.backward()
    our_grads = _grads(model)
    model.zero_grad()

    assert ours.loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert ours.rewards_chosen.mean().item() == pytest.approx(trl_metrics["rewards/chosen"], abs=1e-4)
    assert ours.rewards_rejected.mean().item() == pytest.approx(trl_metrics["rewards/rejected"], abs=1e-4)
    if alpha:
        assert ours.nll.item() == pytest.approx(trl_metrics["nll_loss"], abs=1e-5)
    assert our_grads.keys() == trl_grads.keys()
    for k, g in trl_grads.items():
        torch.testing.assert_close(our_grads[k], g, atol=1e-4, rtol=1e-4, msg=k)
