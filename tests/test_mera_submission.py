"""MERA ruMMLU: the closed test split (no gold answers) gives MERA's upload file and zip instead of a score; the
answered split gives a number; the `submission` switch; the study's default ruMMLU split has answers.

The hub is faked the way `tests/test_mmlu.py` does it: `datasets.load_dataset` is redirected to a local folder laid
out like the hub repo (MERA: `data/rummlu/{train,test}.jsonl` declared as config `rummlu` in the README; mmlu_ru:
its parquet conversion `<subject>/<split>/*.parquet`), and the real `load_dataset` reads it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from rutune.eval.backend_base import BackendConfig
from rutune.eval.backends import make_backend
from rutune.eval.mmlu import run_mmlu
from rutune.eval.suites import EvalRequest
from rutune.eval.suites.mmlu import MmluConfig, run as run_suite

torch.set_num_threads(2)
MINI = Path(__file__).parent / "data" / "rummlu_mera_mini.jsonl"
REPO_ROOT = Path(__file__).resolve().parent.parent
README = """---
configs:
- config_name: rummlu
  data_files:
  - split: train
    path: data/rummlu/train.jsonl
  - split: test
    path: data/rummlu/test.jsonl
---
"""


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return make_backend(BackendConfig(batch_size=8), str(tiny_model_dir))


@pytest.fixture
def mera_hub(tmp_path, monkeypatch):
    """`MERA-evaluation/MERA` served from a local repo: train = the 20 answered mini rows, test = 8 rows with the
    answers blanked and MERA-style ids 100..107."""
    import datasets

    rows = [json.loads(x) for x in MINI.read_text(encoding="utf-8").splitlines()]
    test = [{**r, "outputs": "", "meta": {**r["meta"], "id": 100 + i}} for i, r in enumerate(rows[::5] + rows[1::5])]
    repo = tmp_path / "MERA"
    (repo / "data" / "rummlu").mkdir(parents=True)
    (repo / "README.md").write_text(README, encoding="utf-8")
    for split, part in (("train", rows), ("test", test)):
        (repo / "data" / "rummlu" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    real = datasets.load_dataset

    def load(name, config=None, split=None, revision=None, **kw):
        assert (name, config, revision) == ("MERA-evaluation/MERA", "rummlu", "05ae2bc1b760ccbcd73b1b94b52daed71b9a53da")
        return real(str(repo), config, split=split)

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(datasets, "load_dataset", load)
    return test


def test_closed_test_split_writes_meras_upload_file_and_zip(backend, mera_hub, tmp_path):
    out = tmp_path / "o"
    res = run_mmlu(MmluConfig(path="MERA-evaluation/MERA", shots=1), BackendConfig(), "tiny", out, backend=backend)
    assert (res["metrics"]["accuracy"]["n_valid"], res["metrics"]["accuracy"]["n_total"]) == (0, 8)
    items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    upload = json.loads((out / "submission" / "ruMMLU.json").read_text(encoding="utf-8"))
    assert upload == {"data": {"test": [{"outputs": r["pred"], "meta": {"id": 100 + i}} for i, r in enumerate(items)]}}
    assert {e["outputs"] for e in upload["data"]["test"]} <= set("ABCD")
    with zipfile.ZipFile(out / "submission.zip") as zf:
        assert zf.namelist() == ["ruMMLU.json"]  # at the archive root, as MERA's make_archive(dst, "zip", dst)
        assert json.loads(zf.read("ruMMLU.json")) == upload
    extra = res["extra"]
    assert extra["submission"]["complete"] is True and extra["split"] == "test" and extra["data"] == "MERA test"
    assert extra["warnings"] == [f"MERA test has no gold answers (a closed test): no accuracy; predictions packed "
                                 f"for MERA in {out / 'submission.zip'}"]


def test_answered_train_split_scores_and_names_its_data_in_the_report_column(backend, mera_hub, tmp_path):
    cfg = MmluConfig(path="MERA-evaluation/MERA", split="train", shots=1)
    res = run_suite(EvalRequest(cfg, BackendConfig(), "tiny", "tiny", tmp_path, rounds=50))
    acc = res["metrics"]["accuracy"]
    assert (acc["n_valid"], acc["n_total"]) == (20, 20) and 0.0 <= acc["value"] <= 1.0
    assert acc["display"]["unit_title"] == "MERA train"  # the header reads "ruMMLU (MERA train)"
    assert res["extra"]["warnings"] == [] and "submission" not in res["extra"]
    assert not (tmp_path / "submission").exists()


def test_submission_switch(backend, mera_hub, tmp_path):
    never = run_mmlu(MmluConfig(path="MERA-evaluation/MERA", submission="never"), BackendConfig(), "tiny",
                     tmp_path / "never", backend=backend)
    assert not (tmp_path / "never" / "submission.zip").exists() and "no accuracy" in never["extra"]["warnings"][0]
    run_mmlu(MmluConfig(path="MERA-evaluation/MERA", split="train", submission="always", limit=3), BackendConfig(),
             "tiny", tmp_path / "always", backend=backend)
    upload = json.loads((tmp_path / "always" / "submission" / "ruMMLU.json").read_text())
    assert [e["meta"]["id"] for e in upload["data"]["test"]] == [0, 1, 2]
    part = run_mmlu(MmluConfig(path="MERA-evaluation/MERA", limit=2), BackendConfig(), "tiny", tmp_path / "part",
                    backend=backend)
    assert part["extra"]["submission"]["complete"] is False
    assert "holds 2 of the 8 questions" in part["extra"]["warnings"][0]
    with pytest.raises(ValueError, match="needs MERA rummlu rows"):  # a config error, before anything runs
        MmluConfig(path=str(MINI), format="mmlu_ru", submission="always")


def test_study_default_ruMMLU_split_has_answers(backend, tmp_path, monkeypatch):
    """The study's `eval.mmlu` block, run on a local copy laid out like mmlu_ru's parquet conversion, scores items."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rutune.config import load_config

    mmlu = load_config(REPO_ROOT / "configs" / "experiments" / "study" / "00-base.yaml").eval.mmlu
    assert (mmlu.path, mmlu.format, mmlu.split) == ("NLPCoreTeam/mmlu_ru", "mmlu_ru", "test")
    repo = tmp_path / "mmlu_ru"
    for subject in ("virology", "philosophy"):
        for split, n in (("test", 3), ("dev", 5)):
            (repo / subject / split).mkdir(parents=True)
            pq.write_table(pa.Table.from_pylist([{"question_ru": f"{subject} {split} {i}?", "choices_ru": list("абвг"),
                                                  "answer": i % 4} for i in range(n)]),
                           repo / subject / split / "0000.parquet")
    real = datasets.load_dataset

    def load(name, config=None, split=None, revision=None, data_files=None):
        assert (name, revision) == ("NLPCoreTeam/mmlu_ru", "4178e5c3dc58ad09d2b0a2fa0ce78165f53fecc0")
        return real(str(repo), data_files=data_files, split=split)

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(datasets, "load_dataset", load)
    cfg = mmlu.model_copy(update={"domains": ["virology", "philosophy"]})
    res = run_mmlu(cfg, BackendConfig(), "tiny", tmp_path / "o", backend=backend)
    acc = res["metrics"]["accuracy"]
    assert (acc["n_valid"], acc["n_total"]) == (6, 6) and res["extra"]["data"] == "mmlu_ru test"
    rows = [json.loads(x) for x in (tmp_path / "o" / "items.jsonl").read_text().splitlines()]
    assert all(r["n_shots"] == 5 for r in rows) and "submission" not in res["extra"]


def test_cli_on_a_local_closed_test_folder_points_at_the_upload(mera_hub, tmp_path):
    from typer.testing import CliRunner

    from rutune.cli import app

    folder = tmp_path / "MERA" / "data" / "rummlu"  # test.jsonl without answers beside train.jsonl
    r = CliRunner().invoke(app, ["eval", "mmlu", "--model", "tiny", "--data", str(folder), "--limit", "3",
                                 "--rounds", "20", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert f"MERA submission: {tmp_path / 'o' / 'submission.zip'}" in r.output
    assert "warning: rummlu test has no gold answers" in r.output
    r = CliRunner().invoke(app, ["eval", "mmlu", "--model", "tiny", "--data", str(folder), "--limit", "3",
                                 "--submission", "never", "--out", str(tmp_path / "n")])
    assert r.exit_code == 0 and not (tmp_path / "n" / "submission").exists(), r.output
