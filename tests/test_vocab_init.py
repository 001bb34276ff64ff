"""Embedding initialisation for new tokens (rutune.train.embedding_init): mean rows, old rows, tying, pairing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rutune.data.vocab import VOCAB_RECORD, check_vocab_pairing, extend_tokenizer_dir
from rutune.data.vocab_bpe import VocabError, VocabMismatchError, from_symbols
from rutune.train.embedding_init import INIT_RECORD, adapt_checkpoint, init_new_embeddings, old_tokenisations

COUNTS = {" привет": 50, " приветствую": 40, " мир": 30, " миру": 20, " спасибо": 25, "Спасибо": 5,
          " здравствуйте": 10, " пожалуйста": 12}


def _tiny_qwen(tie: bool, rows: int = 4096):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=rows, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)
    return Qwen2ForCausalLM(config)


@pytest.fixture(scope="module")
def adapted(tiny_model_dir, tmp_path_factory):
    """The tiny model extended by 12 tokens and mean-initialised into a checkpoint folder."""
    root = tmp_path_factory.mktemp("adapt")
    report = extend_tokenizer_dir(tiny_model_dir, root / "tok", COUNTS, 12)
    init = adapt_checkpoint(tiny_model_dir, root / "tok", root / "ckpt")
    return root, report, init


def test_each_new_row_is_the_exact_mean_of_its_old_tokenisation_rows(adapted, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, report, init = adapted
    old_tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    old = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).get_input_embeddings().weight
    model = AutoModelForCausalLM.from_pretrained(str(root / "ckpt"))
    new = model.get_input_embeddings().weight
    assert init.first_new_id == 4096 and init.num_new_tokens == 12 and init.rows_after == 4108
    for token, new_id in zip(report.new_tokens, range(4096, 4108)):
        listed = old_tok.encode(from_symbols(token).decode("utf-8"), add_special_tokens=False)
        assert list(init.sources[new_id]) == listed and len(listed) >= 2
        expected = torch.stack([old[i] for i in listed]).double().mean(dim=0).float()
        assert torch.equal(new[new_id], expected), token
    record = json.loads((root / "ckpt" / INIT_RECORD).read_text())
    assert record["4096"] == list(init.sources[4096])


def test_old_rows_stay_bit_identical_and_the_tied_head_follows(adapted, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    root, _, init = adapted
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(root / "ckpt"))
    assert init.tied and model.config.tie_word_embeddings
    assert model.config.vocab_size == 4108
    assert torch.equal(model.get_input_embeddings().weight[:4096], base.get_input_embeddings().weight)
    assert torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)
    base_state, new_state = base.state_dict(), model.state_dict()
    for name, value in base_state.items():
        if "embed_tokens" not in name and "lm_head" not in name:
            assert torch.equal(new_state[name], value), name


def test_adapted_checkpoint_loads_with_the_extended_tokenizer_and_chat_template(adapted, tiny_model_dir):
    from transformers import AutoTokenizer

    root, _, _ = adapted
    ckpt, ext, base = (AutoTokenizer.from_pretrained(str(p)) for p in (root / "ckpt", root / "tok", tiny_model_dir))
    text = "Привет, мир! Спасибо. Hello <|im_end|>"
    assert ckpt.encode(text) == ext.encode(text) != base.encode(text)
    assert ckpt.chat_template == base.chat_template
    assert len(ckpt) == 4108
    check_vocab_pairing(root / "ckpt", root / "ckpt")


def test_a_wrong_tokenizer_for_a_checkpoint_is_detected(adapted, tiny_model_dir, tmp_path):
    root, _, _ = adapted
    with pytest.raises(VocabMismatchError, match=r"uses ids up to 4107 but model .* has 4096 embedding rows"):
        check_vocab_pairing(tiny_model_dir, root / "tok")
    with pytest.raises(VocabMismatchError, match=r"was adapted to tokenizer [0-9a-f]{16}, but .* is [0-9a-f]{16}"):
        check_vocab_pairing(root / "ckpt", tiny_model_dir)
    padded = tmp_path / "padded"  # a model with spare rows (like Qwen2.5's 151,936) but never adapted
    padded.mkdir()
    (padded / "config.json").write_text(json.dumps({"vocab_size": 10_000}))
    with pytest.raises(VocabMismatchError, match=r"is an extended vocabulary but model .* was never adapted"):
        check_vocab_pairing(padded, root / "tok")


def test_adapting_a_model_whose_tokenizer_is_not_the_base_is_refused(adapted, tiny_model_dir, tmp_path):
    root, _, _ = adapted
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["model"]["merges"] = tok["model"]["merges"][:-1]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(VocabMismatchError, match=r"was extended from tokenizer [0-9a-f]{16}, but model .* uses"):
        adapt_checkpoint(other, root / "tok", tmp_path / "out")
    with pytest.raises(VocabError, match=r"no rutune_vocab.json; make it with vocab.extend_tokenizer_dir$"):
        adapt_checkpoint(tiny_model_dir, tiny_model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert json.loads((root / "tok" / VOCAB_RECORD).read_text())["num_new_tokens"] == 12


def test_untied_head_rows_are_the_mean_of_old_head_rows_worked_by_hand():
    model = _tiny_qwen(tie=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[5] = 1.0
        model.get_input_embeddings().weight[7] = 2.0
        model.lm_head.weight[5] = -4.0
        model.lm_head.weight[7] = 0.5
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_head = model.lm_head.weight.detach().clone()
    report = init_new_embeddings(model, {4096: (5, 7), 4097: (9,)})
    assert (report.rows_before, report.rows_after, report.tied) == (4096, 4098, False)
    assert torch.equal(model.get_input_embeddings().weight[4096], torch.full((8,), 1.5))
    assert torch.equal(model.lm_head.weight[4096], torch.full((8,), -1.75))
    assert torch.equal(model.get_input_embeddings().weight[4097], old_in[9])
    assert torch.equal(model.lm_head.weight[4097], old_head[9])
    assert torch.equal(model.get_input_embeddings().weight[:4096], old_in)
    assert torch.equal(model.lm_head.weight[:4096], old_head)


def test_spare_padded_rows_are_reused_without_resizing():
    model = _tiny_qwen(tie=True, rows=4100)
    before = model.get_input_embeddings().weight.detach().clone()
    report = init_new_embeddings(model, {4096: (1, 2), 4097: (3,)})
    assert (report.rows_before, report.rows_after, report.tied) == (4100, 4100, True)
    weight = model.get_input_embeddings().weight
    assert torch.equal(weight[4098:], before[4098:]) and torch.equal(weight[:4096], before[:4096])
    assert torch.equal(model.lm_head.weight[4097], before[3])


def test_bad_sources_raise_one_line_errors():
    model = _tiny_qwen(tie=True)
    with pytest.raises(VocabMismatchError, match=r"^embedding init: model has 4096 rows but the tokenizer's new ids "
                                                 r"start at 5000"):
        init_new_embeddings(model, {5000: (1,)})
    with pytest.raises(VocabError, match=r"^embedding init: new token 4097 would be built from id 4096, not an old id$"):
        init_new_embeddings(model, {4096: (1,), 4097: (4096,)})
    with pytest.raises(VocabError, match=r"^embedding init: no new tokens to initialise$"):
        init_new_embeddings(model, {})


def test_partial_character_tokens_fall_back_to_byte_level_segmentation(tiny_model_dir):
    from transformers import AutoTokenizer

    old = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    backend = old.backend_tokenizer
    whole = old_tokenisations(old, {"ĠÐ¿": 5000})
    assert whole == {5000: tuple(old.encode(" п", add_special_tokens=False))}
    half = old_tokenisations(old, {"ĠÐ": 5001})  # a space and the first byte of a Cyrillic letter
    assert half == {5001: tuple(t.id for t in backend.model.tokenize("ĠÐ"))}
