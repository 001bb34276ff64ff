"""Loading ruIFEval rows: the bundled sample stands in (and says so), local JSONL files, the pinned upstream file
over real HTTP (a local server laid out like raw.githubusercontent.com), and the hub code path with
`datasets.load_dataset` replaced by a stub (the hub is unreachable from tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rutune.eval.ifeval import HUB_ID, PINNED_URL, SAMPLE_PATH, IfevalError, load_rows
from rutune.eval.ifeval import rows as rows_module
from rutune.eval.suites.ifeval import IfevalConfig, inputs

sys.path.insert(0, str(Path(__file__).parent))
from static_server import serve_folder  # noqa: E402

TWO_ROWS = [
    {"key": 5, "prompt": "Напиши без запятых.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    {"key": 9, "prompt": "Напиши 3 абзаца.", "instruction_id_list": ["length_constraints:number_paragraphs"],
     "kwargs": [{"num_paragraphs": 3}]},
]


def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")
    return path


def test_no_source_substitutes_the_bundled_sample_and_reports_it():
    loaded = load_rows()
    assert loaded.bundled_sample is True
    assert (loaded.source, loaded.revision, len(loaded.rows)) == (str(SAMPLE_PATH), None, 66)


def test_local_file_is_read_in_order_skipping_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [TWO_ROWS[0], "", TWO_ROWS[1]])
    loaded = load_rows(path)
    assert (loaded.bundled_sample, loaded.revision, loaded.source) == (False, None, str(path))
    assert [r["key"] for r in loaded.rows] == [5, 9]
    assert loaded.rows[1]["kwargs"] == [{"num_paragraphs": 3}]


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [TWO_ROWS[0], '{"key": 9, "prompt": '])
    with pytest.raises(IfevalError, match=r"^mine\.jsonl line 2: not valid JSON"):
        load_rows(str(path))


def test_invalid_row_in_a_file_names_file_line_and_key(tmp_path):
    bad = {**TWO_ROWS[1], "instruction_id_list": ["length_constraints:number_paragraph"]}
    path = write_jsonl(tmp_path / "mine.jsonl", [TWO_ROWS[0], bad])
    with pytest.raises(IfevalError, match=r"^mine\.jsonl line 2 \(key 9\), instruction 1 .*did you mean "
                                          r"'length_constraints:number_paragraphs'"):
        load_rows(path)


def test_duplicate_keys_name_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [TWO_ROWS[0], {**TWO_ROWS[1], "key": 5}])
    with pytest.raises(IfevalError, match=r"^mine\.jsonl line 2: duplicate key 5 \(first at mine\.jsonl line 1\)$"):
        load_rows(path)


def test_empty_file_missing_file_and_revision_for_a_file_are_errors(tmp_path):
    with pytest.raises(IfevalError, match="the file is empty"):
        load_rows(write_jsonl(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(IfevalError, match="not a ruIFEval .jsonl file that exists"):
        load_rows(tmp_path / "missing.jsonl")
    with pytest.raises(IfevalError, match="a revision applies to hub dataset ids"):
        load_rows(write_jsonl(tmp_path / "mine.jsonl", TWO_ROWS), revision="abc")


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace `datasets.load_dataset` with a stub serving hub-style rows (every kwarg key, nulls where unused)."""
    datasets = pytest.importorskip("datasets")
    calls = []
    null_keys = {"num_paragraphs": None, "num_words": None, "relation": None}

    def load_dataset(path, revision=None, split=None):
        calls.append((path, revision, split))
        return [{**r, "kwargs": [{**null_keys, **kw} for kw in r["kwargs"]]} for r in TWO_ROWS]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_ruifeval_name_means_the_pinned_upstream_file_fetched_once_over_http(tmp_path, monkeypatch, fake_hub):
    assert "/9dd2387f8a8ab12a10f3da79097546347e8af7e0/data/ruIFEval_v0.1.jsonl" in PINNED_URL
    relative = PINNED_URL.removeprefix("https://raw.githubusercontent.com/")
    served = tmp_path / "www" / relative
    served.parent.mkdir(parents=True)
    write_jsonl(served, TWO_ROWS)
    monkeypatch.setenv("RUTUNE_CACHE", str(tmp_path / "cache"))
    with serve_folder(tmp_path / "www") as (root_url, hits):
        local_url = f"{root_url}/{relative}"
        monkeypatch.setattr(rows_module, "PINNED_URL", local_url)
        first = load_rows(HUB_ID)
        second = load_rows(HUB_ID)
    assert len(hits) == 1 and fake_hub == []  # downloaded once, then the cache; never the hub client
    assert (first.source, first.revision, first.bundled_sample) == (local_url, None, False)
    assert [r["key"] for r in second.rows] == [5, 9]
    assert inputs(IfevalConfig(path=HUB_ID), None) == [f"url:{local_url}"]  # the identity names the commit URL


def test_ruifeval_name_with_an_explicit_revision_goes_to_the_hub(fake_hub):
    loaded = load_rows(HUB_ID, revision="feedbee")
    assert fake_hub == [(HUB_ID, "feedbee", "train")]
    assert (loaded.source, loaded.revision, loaded.bundled_sample) == (HUB_ID, "feedbee", False)
    assert [r["kwargs"] for r in loaded.rows] == [[{}], [{"num_paragraphs": 3}]]  # nulls dropped


def test_pinned_file_unreachable_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RUTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rows_module, "PINNED_URL", "http://127.0.0.1:9/ruIFEval_v0.1.jsonl")
    with pytest.raises(IfevalError) as info:
        load_rows(HUB_ID)
    assert str(info.value).startswith("http://127.0.0.1:9/ruIFEval_v0.1.jsonl: cannot download")
    assert "\n" not in str(info.value)


def test_hub_revision_given_by_the_caller_is_passed_through(fake_hub):
    loaded = load_rows("someone/ifeval-ru", revision="0123abc")
    assert fake_hub == [("someone/ifeval-ru", "0123abc", "train")]
    assert loaded.revision == "0123abc"


def test_hub_failure_is_one_error_line(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nlong details")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(IfevalError) as info:
        load_rows(HUB_ID, revision="main")
    assert str(info.value) == (f"cannot load {HUB_ID}@main (train) from the hub: "
                               "ConnectionError: Couldn't reach the hub")
