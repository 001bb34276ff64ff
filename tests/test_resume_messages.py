"""What a resumed training run says: one `resuming …` line on stderr, and no false missing-keys alarm.

The tiny model ties `lm_head.weight` to `embed_tokens.weight`, so its safetensors checkpoint stores the tensor once
and the Trainer's resume load reports `lm_head.weight` missing; that warning is filtered for a tied model only.
The checkpoints here are written by hand (weights + trainer_state.json + COMPLETE) and no step is trained, so the
file runs in seconds.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from rutune.train.checkpoints import COMPLETE, TiedKeysFilter, resume_line, train_resumable

MISSING_LM_HEAD = "There were missing keys in the checkpoint model loaded: ['lm_head.weight']."


@dataclass(frozen=True)
class Paths:
    """The two paths `train_resumable` reads, laid out as a stage's: `<run>/train/sft/{trainer,metrics.jsonl}`."""

    root: Path

    @property
    def trainer_dir(self) -> Path:
        return self.root / "trainer"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"


def _checkpoint(tiny_model_dir: Path, paths: Paths, step: int, max_steps: int) -> Path:
    """A complete `checkpoint-<step>/` holding the tiny model's weights as saved (no `lm_head.weight`)."""
    folder = paths.trainer_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, folder / name)
    state = {"global_step": step, "max_steps": max_steps, "log_history": [{"loss": 2.0, "step": step}]}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    (folder / COMPLETE).write_text(f"{step}\n")
    return folder


def _trainer(tiny_model_dir: Path, paths: Paths, *, tied: bool, max_steps: int):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # from_pretrained's own notes about the untied head are not under test
    try:
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), tie_word_embeddings=tied)
    finally:
        hf_logging.set_verbosity_warning()
    args = TrainingArguments(output_dir=str(paths.trainer_dir), max_steps=max_steps, report_to=[], use_cpu=True,
                             per_device_train_batch_size=1, save_strategy="no")
    return Trainer(model=model, args=args)


def _resume_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("resuming ")]


@pytest.fixture
def trainer_log():
    """Warnings the Trainer's logger lets through (a handler sits behind the logger's filters)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("transformers.trainer")
    handler, level = Keep(level=logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)
    assert not [f for f in logger.filters if isinstance(f, TiedKeysFilter)], "the filter outlived the load"


def _missing_key_warnings(records) -> list[str]:
    return [r.getMessage() for r in records if r.getMessage().startswith("There were missing keys")]


def test_finished_checkpoint_resume_prints_one_line_and_no_tied_key_alarm(tiny_model_dir, tmp_path, capsys,
                                                                          trainer_log):
    import torch
    from safetensors.torch import load_file

    paths = Paths(tmp_path / "run" / "train" / "sft")
    checkpoint = _checkpoint(tiny_model_dir, paths, step=4, max_steps=4)
    trainer = _trainer(tiny_model_dir, paths, tied=True, max_steps=4)
    with torch.no_grad():
        trainer.model.model.embed_tokens.weight.zero_()  # so the resume load must restore it
    out = train_resumable(trainer, paths)
    assert out.global_step == 4
    assert _resume_lines(capsys) == ["resuming train/sft from checkpoint-4 (step 4 of 4)"]
    assert _missing_key_warnings(trainer_log) == []
    # harmless indeed: the "missing" head holds the loaded embedding, as the one tensor it shares
    saved = load_file(str(checkpoint / "model.safetensors"))["model.embed_tokens.weight"]
    assert "lm_head.weight" not in load_file(str(checkpoint / "model.safetensors"))
    assert torch.equal(trainer.model.lm_head.weight, saved)


def test_mid_run_resume_names_step_and_total_and_filters_only_during_the_load(tiny_model_dir, tmp_path, capsys,
                                                                              trainer_log):
    paths = Paths(tmp_path / "run" / "train" / "sft")
    _checkpoint(tiny_model_dir, paths, step=2, max_steps=6)
    trainer = _trainer(tiny_model_dir, paths, tied=True, max_steps=6)
    seen = []

    def train(resume_from_checkpoint=None):  # what Trainer.train does first on resume: load the weights
        trainer._load_from_checkpoint(resume_from_checkpoint)
        logging.getLogger("transformers.trainer").warning(MISSING_LM_HEAD)  # after the load: not filtered
        seen.append(resume_from_checkpoint)
        return "trained"

    trainer.train = train
    assert train_resumable(trainer, paths) == "trained"
    assert seen == [str(paths.trainer_dir / "checkpoint-2")]
    assert _resume_lines(capsys) == ["resuming train/sft from checkpoint-2 (step 2 of 6)"]
    assert _missing_key_warnings(trainer_log) == [MISSING_LM_HEAD]  # only the one logged outside the load
    assert "_load_from_checkpoint" not in vars(trainer)  # the Trainer's own method is back


def test_untied_model_still_reports_a_missing_head(tiny_model_dir, tmp_path, capsys, trainer_log):
    paths = Paths(tmp_path / "run" / "train" / "sft")
    _checkpoint(tiny_model_dir, paths, step=4, max_steps=4)
    trainer = _trainer(tiny_model_dir, paths, tied=False, max_steps=4)
    train_resumable(trainer, paths)
    assert _missing_key_warnings(trainer_log) == [MISSING_LM_HEAD]
    assert _resume_lines(capsys) == ["resuming train/sft from checkpoint-4 (step 4 of 4)"]


def test_fresh_start_says_nothing_about_resuming(tiny_model_dir, tmp_path, capsys):
    paths = Paths(tmp_path / "run" / "train" / "sft")
    trainer = _trainer(tiny_model_dir, paths, tied=True, max_steps=4)
    trainer.train = lambda resume_from_checkpoint=None: resume_from_checkpoint
    assert train_resumable(trainer, paths) is None
    assert _resume_lines(capsys) == []


def test_filter_drops_only_missing_keys_that_have_a_loaded_alias():
    quiet = TiedKeysFilter({"lm_head.weight": {"model.embed_tokens.weight"},
                            "model.embed_tokens.weight": {"lm_head.weight"}})

    def passes(message: str) -> bool:
        return quiet.filter(logging.LogRecord("transformers.trainer", logging.WARNING, __file__, 1, message, None,
                                              None))

    assert not passes(MISSING_LM_HEAD)
    assert passes("There were missing keys in the checkpoint model loaded: ['lm_head.weight', 'model.norm.weight'].")
    assert passes("There were missing keys in the checkpoint model loaded: "
                  "['lm_head.weight', 'model.embed_tokens.weight'].")  # both names of the tensor: really missing
    assert passes("There were unexpected keys in the checkpoint model loaded: ['lm_head.weight'].")
    assert passes("There were missing keys in the checkpoint model loaded: not a list.")


def test_resume_line_without_a_known_total(tmp_path):
    checkpoint = tmp_path / "train" / "dpo" / "trainer" / "checkpoint-7"
    checkpoint.mkdir(parents=True)
    assert resume_line(checkpoint.parent.parent, checkpoint, -1) == "resuming train/dpo from checkpoint-7 (step 7)"
