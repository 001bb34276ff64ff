"""Bad input to `rutune validate` / `rutune prepare`: one line naming file/row/YAML path, or a counted skip.

Each case runs the real CLI in-process. Errors must be one line, exit code 2, no traceback, and no
prepared output or manifest left behind.
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
