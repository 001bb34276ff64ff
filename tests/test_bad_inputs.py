"""Bad input across the CLI — configs, data, checkpoints, judge profiles, eval data, serve requests — in one table.

Each ends in one line naming the file, row or YAML path (exit code 2, no traceback), a counted skip, or an
OpenAI-style 4xx from the server. CLI cases run the real CLI in-process; prepare cases also check that no
prepared output or manifest is left behind.
"""

import json
import textwrap

import pytest
from typer.testing import CliRunner

from rutune.cli import app
from sample_rows import gm_row, pref_row, rag_row, saiga_row, write_jsonl

runner = CliRunner()


def run_cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, (result.stderr if result.stderr_bytes is not None else "") + result.stdout


def config_file(tmp_path, source_yaml, kind="sft"):
    text = f"""
    name: bad
    output_root: {tmp_path / 'runs'}
    data:
      {kind}:
        sources:
          - {source_yaml}
    """
    p = tmp_path / "exp.yaml"
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def one_error(code, out, *needles):
    lines = [l for l in out.splitlines() if l.strip()]
    assert code == 2, out
    assert "Traceback" not in out
    errors = [l for l in lines if l.startswith("error:")]
    assert errors, out
    for n in needles:
        assert any(n in e for e in errors), (n, out)
    return errors


def src(name, path, extra="percent: 100"):
    return "{" + f"name: {name}, path: '{path}', {extra}" + "}"


ERROR_CASES = {
    "missing data file": (lambda t: src("saiga_scored", t / "absent.jsonl"), ["absent.jsonl: file not found"]),
    "unknown source": (lambda t: "{name: saiga_scord, percent: 5}", ["data.sft.sources.0: unknown name 'saiga_scord'"]),
    "wrong columns": (lambda t: src("saiga_scored", write_jsonl(t / "gm.jsonl", [gm_row(0)])),
                      ["gm.jsonl: missing column(s) is_bad_by_regex, language, messages, opus_score for source saiga_scored"]),
    "negative percent": (lambda t: "{name: saiga_scored, percent: -3}", ["data.sft.sources.0.percent: Input should be greater than or equal to 0"]),
    "non-numeric percent": (lambda t: "{name: saiga_scored, percent: lots}", ["data.sft.sources.0.percent: Input should be a valid number"]),
    "percent and count": (lambda t: "{name: saiga_scored, percent: 5, count: 3}", ["data.sft.sources.0: give `percent` or `count`, not both"]),
    "unknown key": (lambda t: "{name: saiga_scored, percent: 5, min_scroe: 3}", ["data.sft.sources.0.min_scroe: unknown key; did you mean `min_score`?"]),
    "non-utf8 bytes": (lambda t: src("saiga_scored", _bytes(t / "bin.jsonl", b'{"messages": "\xff"}\n')), ["bin.jsonl:1: not UTF-8"]),
    "broken json line": (lambda t: src("saiga_scored", _bytes(t / "broken.jsonl", b'{"messages": [}\n')), ["broken.jsonl:1: invalid JSON"]),
    "empty folder": (lambda t: src("saiga_scored", _dir(t / "emptydir")), ["emptydir: folder holds no .parquet/.jsonl/.json files"]),
    "preference source under sft": (lambda t: "{name: saiga_preferences, percent: 5}", ["data.sft.sources.0: unknown name 'saiga_preferences'"]),
    "empty after filters": (lambda t: src("saiga_scored", write_jsonl(t / "s.jsonl", [saiga_row(0, score=3)])),
                            ["no rows left after filters (dropped: min_score 1)"]),
}


def _bytes(path, data):
    path.write_bytes(data)
    return path


def _dir(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_prepare_bad_input_is_one_line(tmp_path, case):
    make, needles = ERROR_CASES[case]
    cfg = config_file(tmp_path, make(tmp_path))
    code, out = run_cli("prepare", cfg)
    one_error(code, out, *needles)
    assert not (tmp_path / "runs" / "bad" / "prepare" / "manifest.json").exists()
    assert not (tmp_path / "runs" / "bad" / "prepare" / "sft.parquet").exists()


def test_duplicate_yaml_key(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("name: a\nname: b\ndata: {}\n", encoding="utf-8")
    one_error(*run_cli("validate", p), "exp.yaml:2: name: duplicate key (first at line 1)")


def test_missing_config(tmp_path):
    one_error(*run_cli("validate", tmp_path / "nope.yaml"), "nope.yaml: config file not found")


def test_bad_override(tmp_path):
    cfg = config_file(tmp_path, "{name: saiga_scored, percent: 5}")
    one_error(*run_cli("validate", cfg, "data.sft.sources.0.percent=-1"), "data.sft.sources.0.percent")


SKIP_ROWS = {
    "wrong role": (saiga_row(1, messages=[{"role": "narrator", "content": "x"}, {"role": "bot", "content": "y"}]),
                   "invalid: turn N has role 'narrator'; expected one of system, user, assistant"),
    "empty content": (saiga_row(2, messages=[{"role": "user", "content": "  "}, {"role": "bot", "content": "y"}]),
                      "invalid: turn N (user) has empty content"),
    "non-alternating": (saiga_row(3, messages=[{"role": "user", "content": "a"}, {"role": "bot", "content": "b"},
                                               {"role": "bot", "content": "c"}]),
                        "invalid: turn N is 'assistant' but 'user' was expected (turns must alternate)"),
    "ends with user": (saiga_row(4, messages=[{"role": "user", "content": "a"}, {"role": "bot", "content": "b"},
                                              {"role": "user", "content": "c"}]),
                       "invalid: last turn is 'user'; expected 'assistant'"),
}


def test_bad_rows_are_counted_skips_with_row_numbers(tmp_path):
    rows = [saiga_row(0)] + [r for r, _ in SKIP_ROWS.values()]
    cfg = config_file(tmp_path, src("saiga_scored", write_jsonl(tmp_path / "s.jsonl", rows)))
    code, out = run_cli("prepare", cfg)
    assert code == 0, out
    manifest = json.loads((tmp_path / "runs" / "bad" / "prepare" / "manifest.json").read_text())
    report = manifest["sft"]["sources"][0]
    assert report["dropped"] == {reason: 1 for _, reason in SKIP_ROWS.values()}
    assert report["examples"][SKIP_ROWS["wrong role"][1]].endswith("s.jsonl row 1: turn 0 has role 'narrator'; "
                                                                  "expected one of system, user, assistant")


def test_broken_rag_documents_and_bad_pairs_are_counted(tmp_path):
    rag = [rag_row(0), rag_row(1, docs='[{"doc_id": 0, "content": "x"')]
    prefs = [pref_row(0), pref_row(1, chosen="Same", rejected="Same"),
             pref_row(2, prompt=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
             pref_row(3, rejected=" ")]
    p = tmp_path / "exp.yaml"
    p.write_text(textwrap.dedent(f"""
    name: bad
    output_root: {tmp_path / 'runs'}
    data:
      sft:
        sources: [{src("grounded_rag_ru_v2", write_jsonl(tmp_path / "r.jsonl", rag))}]
      preference:
        sources: [{src("saiga_preferences", write_jsonl(tmp_path / "p.jsonl", prefs), "percent: 100, length_ratio: null")}]
    """), encoding="utf-8")
    code, out = run_cli("prepare", p)
    assert code == 0, out
    m = json.loads((tmp_path / "runs" / "bad" / "prepare" / "manifest.json").read_text())
    assert list(m["sft"]["sources"][0]["dropped"]) == [
        "invalid: documents turn is not valid JSON (Expecting ',' delimiter at char 29)"]
    assert m["preference"]["sources"][0]["dropped"] == {
        "invalid: chosen and rejected are identical": 1,
        "invalid: last turn is 'assistant'; expected 'user'": 1,
        "invalid: rejected is empty": 1,
    }


# ---------------------------------------------------------------- training, checkpoints, eval, judge, sweep
TRAIN_BASE = """
name: bad
output_root: {root}
data:
  sft:
    sources: [{{name: saiga_scored, percent: 10}}]
train:
  stages:
    - {stage}
"""


def train_config(tmp_path, stage="{recipe: sft}"):
    p = tmp_path / "train.yaml"
    p.write_text(TRAIN_BASE.format(root=tmp_path / "runs", stage=stage), encoding="utf-8")
    return p


def no_template_model(tmp_path):
    from rutune.models import tiny_model_path

    folder = tmp_path / "notemplate"
    folder.mkdir()
    for f in tiny_model_path().iterdir():
        if f.name != "chat_template.jinja":
            (folder / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def mmlu_three_options(tmp_path):
    from rutune.data.sources import SAMPLES

    row = json.loads((SAMPLES / "rummlu_mera.jsonl").read_text(encoding="utf-8").splitlines()[0])
    del row["inputs"]["option_d"]
    return write_jsonl(tmp_path / "m3.jsonl", [row])


CLI_CASES = {
    "train without prepared data": (lambda t: ["train", train_config(t)], ["prepared SFT data not found; run `rutune prepare CONFIG` first"]),
    "train init_from unknown stage": (lambda t: ["train", train_config(t, "{recipe: sft, init_from: sfft}")],
                                      ["init_from: unknown stage 'sfft'"]),
    "negative learning rate": (lambda t: ["validate", train_config(t, "{recipe: sft, learning_rate: -1.0e-5}")],
                               ["train.stages.0.learning_rate: Input should be greater than 0"]),
    "zero batch": (lambda t: ["validate", train_config(t, "{recipe: sft, per_device_batch_size: 0}")],
                   ["train.stages.0.per_device_batch_size: Input should be greater than 0"]),
    "simpo beta not positive": (lambda t: ["validate", train_config(t, "{recipe: preference, init_from: base, "
                                                                       "loss: {name: simpo, beta: 0.0}}")],
                                ["train.stages.0.loss.beta: Input should be greater than 0"]),
    "unknown recipe": (lambda t: ["validate", train_config(t, "{recipe: dpo}")], ["train.stages.0: unknown name"]),
    "eval model folder missing": (lambda t: ["eval", "mmlu", "--model", t / "absent-model"], ["absent-model: folder not found"]),
    "serve checkpoint missing": (lambda t: ["serve", t / "absent-ckpt"], ["absent-ckpt: folder not found"]),
    "serve public host without key": (lambda t: ["serve", "tiny", "--host", "0.0.0.0", "--api-key-env", "RUTUNE_TEST_UNSET_KEY"],
                                      ["an API key is required: set the environment variable RUTUNE_TEST_UNSET_KEY"]),
    "chat template requested but absent": (lambda t: ["eval", "babilong", "--model", no_template_model(t), "--lengths", "1k",
                                                      "--samples", "1"], ["its tokenizer has no chat template"]),
    "mmlu question with 3 options": (lambda t: ["eval", "mmlu", "--model", "tiny", "--data", mmlu_three_options(t)],
                                     ["m3.jsonl:1: a question needs 4 options (option_a..option_d), found 3"]),
    "babilong bad length": (lambda t: ["eval", "babilong", "--model", "tiny", "--lengths", "4q"], ["length '4q': expected e.g. 4k or 512"]),
    "judge profile missing": (lambda t: ["eval", "arena", "--model", "tiny", "--judge", t / "nojudge.yaml"], ["nojudge.yaml: file not found"]),
    "judge profile unknown key": (lambda t: ["eval", "arena", "--model", "tiny", "--judge",
                                             _text(t / "j.yaml", "base_url: http://h/v1\nmodel: m\nbogus: 1\n")], ["j.yaml:3: bogus: unknown key"]),
    "arena with neither model nor answers": (lambda t: ["eval", "arena"], ["give --model PATH"]),
    "unknown backend names the option": (lambda t: ["eval", "arena", "--model", "tiny", "--backend", "foo"],
                                         ["--backend: Input should be 'hf', 'vllm' or 'openai'"]),
    "sweep grid unknown key": (lambda t: ["sweep", _text(t / "g.yaml", "base: x.yaml\nvariantz: {}\n"), "--dry-run"], ["variantz: unknown key"]),
    "report on a folder with no runs": (lambda t: ["report", _dir(t / "empty-run"), "--out", t / "rep"], ["empty-run"]),
    "eval.models names no stage": (lambda t: ["run", _text(t / "m.yaml", "name: m\noutput_root: " + str(t / "runs") +
                                                             "\ndata: {}\neval:\n  models: [sftt]\n")],
                                   ["eval.models.0: 'sftt' is not `base`, a train stage"]),
}


def _text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input_is_one_line(tmp_path, case, monkeypatch):
    monkeypatch.delenv("RUTUNE_TEST_UNSET_KEY", raising=False)
    make, needles = CLI_CASES[case]
    one_error(*run_cli(*make(tmp_path)), *needles)


# ---------------------------------------------------------------- serve requests: OpenAI-style 4xx
@pytest.fixture(scope="module")
def served():
    from fastapi.testclient import TestClient

    from rutune.serve import Generator, load_checkpoint
    from rutune.serve_app import create_app

    app_ = create_app(Generator(load_checkpoint("tiny")), model_name="tiny", max_tokens_cap=64)
    with TestClient(app_) as client:
        yield client


SERVE_CASES = {
    "unknown model": ({"model": "gpt-x", "messages": [{"role": "user", "content": "Привет"}]}, 404),
    "empty messages": ({"model": "tiny", "messages": []}, 400),
    "oversized max_tokens": ({"model": "tiny", "messages": [{"role": "user", "content": "Привет"}], "max_tokens": 10**6}, 400),
    "bad role": ({"model": "tiny", "messages": [{"role": "wizard", "content": "Привет"}]}, 400),
    "n above 1": ({"model": "tiny", "messages": [{"role": "user", "content": "Привет"}], "n": 2}, 400),
}


@pytest.mark.parametrize("case", sorted(SERVE_CASES))
def test_serve_bad_request_is_openai_style(served, case):
    body, status = SERVE_CASES[case]
    r = served.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and "\n" not in err["message"] and err["type"]


def test_the_table_has_at_least_30_cases():
    assert len(ERROR_CASES) + 3 + len(SKIP_ROWS) + len(CLI_CASES) + len(SERVE_CASES) >= 30
