"""No secrets on disk: a whole `rutune run` with a key-protected judge leaves the key in no file and no log line."""

import os
import subprocess
import sys
from pathlib import Path

from judge_server import JudgeServer

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-rutune-test-9f8e7d6c5b4a"

CONFIG = """
name: secret
output_root: {root}
data:
  sft:
    sources:
      - {{name: saiga_scored, percent: 20}}
train:
  stages:
    - {{recipe: sft, max_steps: 1, per_device_batch_size: 2}}
eval:
  models: [base, sft]
  arena: {{limit: 3, max_new_tokens: 8, bootstrap_rounds: 20}}
report:
  formats: [md, csv, html]
"""


def test_judge_key_is_nowhere_in_the_run_dir_or_logs(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG.format(root=tmp_path / "runs"), encoding="utf-8")
    with JudgeServer(lambda body: "Оба ответа похожи. My final verdict is tie: [[A=B]]", api_key=KEY) as server:
        env = {**os.environ, "RUTUNE_JUDGE_BASE_URL": server.base_url, "RUTUNE_JUDGE_MODEL": "scripted-judge",
               "RUTUNE_JUDGE_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "rutune.cli", "run", str(cfg)], env=env, capture_output=True,
                              text=True, timeout=600, cwd=tmp_path)
        judged = [c for c in server.calls if c.fault is None]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(judged) >= 2 * 3 * 2  # both games of 3 questions for 2 models reached the key-protected judge
    assert KEY not in proc.stdout + proc.stderr
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "results.json" and "arena" in p.parts for p in files)
    leaked = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    assert leaked == []
    # the judge's identity is recorded; the env var's name may be, its value never
    arena = (tmp_path / "runs" / "secret" / "eval" / "arena" / "sft" / "results.json").read_text(encoding="utf-8")
    assert "scripted-judge" in arena


def test_remote_code_and_pickles_are_refused_unless_allowed(tmp_path):
    """A checkpoint that needs its own code, or ships only a pickle, does not load by default."""
    import json

    import pytest
    import torch

    from rutune.eval.backend_hf import load_model_and_tokenizer
    from rutune.eval.errors import EvalError
    from rutune.models import tiny_model_path

    src = tiny_model_path()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    from safetensors.torch import load_file

    torch.save(load_file(str(src / "model.safetensors")), pickled / "pytorch_model.bin")
    with pytest.raises(EvalError, match="cannot load"):
        load_model_and_tokenizer(str(pickled))

    remote = tmp_path / "remote"
    remote.mkdir()
    for f in src.iterdir():
        (remote / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    model, _, _ = load_model_and_tokenizer(str(remote))  # auto_map ignored: the built-in Qwen2 class loads
    assert type(model).__name__ == "Qwen2ForCausalLM"
