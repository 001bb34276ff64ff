"""The prepare stage on small files with known content: exact drop counts, realised sizes, outputs, reruns."""

import json

import datasets
import pytest

from rutune.config import parse_config
from rutune.data.prepare import run_prepare
from rutune.data.sources import DataError, fold_rag_conversation
from rutune.data.sources._common import messages_of as _messages
from sample_rows import gm_row, pref_row, rag_row, saiga_row, write_jsonl


@pytest.fixture
def files(tmp_path):
    gm = [gm_row(i) for i in range(10)] + [gm_row(10, lang="en")] + [gm_row(11, question=gm_row(0)["conversation"][0]["content"])]
    saiga = ([saiga_row(i) for i in range(8)] + [saiga_row(8, score=5), saiga_row(9, bad=True),
             saiga_row(10, language="English")]
             + [saiga_row(11, messages=[{"role": "user", "content": "Привет"}, {"role": "user", "content": "Эй"}])])
    rag = [rag_row(i) for i in range(4)] + [rag_row(4, type_="ood")]
    pref = [pref_row(i) for i in range(6)] + [pref_row(6, approved=False), pref_row(7, chosen="Одинаково", rejected="Одинаково")]
    return {
        "gm": write_jsonl(tmp_path / "gm.jsonl", gm),
        "saiga": write_jsonl(tmp_path / "saiga.jsonl", saiga),
        "rag": write_jsonl(tmp_path / "rag.jsonl", rag),
        "pref": write_jsonl(tmp_path / "pref.jsonl", pref),
        "root": tmp_path,
    }


def config(files, **over):
    tree = {
        "name": "t", "seed": 3, "output_root": str(files["root"] / "runs"),
        "data": {
            "sft": {"holdout_percent": 0, "sources": [
                {"name": "grandmaster_pro_max", "path": str(files["gm"]), "percent": 50, "prompt_lang": ["ru"]},
                {"name": "saiga_scored", "path": str(files["saiga"]), "percent": 100, "language": ["Russian"]},
                {"name": "grounded_rag_ru_v2", "path": str(files["rag"]), "percent": 250, "types": ["good"]},
            ]},
            "preference": {"sources": [{"name": "saiga_preferences", "path": str(files["pref"]), "count": 4,
                                        "length_ratio": None}]},
        },
    }
    tree["data"].update(over)
    return parse_config(tree)


def test_prepare_counts_every_drop_and_realises_percent(files):
    m = run_prepare(config(files))
    gm, saiga, rag = m["sft"]["sources"]
    assert gm["dropped"] == {"prompt_lang": 1, "duplicate_exact": 1} and gm["after_filters"] == 10
    assert gm["realised"] == 5 and gm["requested"] == "50%"
    assert saiga["dropped"] == {"min_score": 1, "is_bad_by_regex": 1, "language": 1,
                                "invalid: turn N is 'user' but 'assistant' was expected (turns must alternate)": 1}
    assert saiga["after_filters"] == 8 and saiga["realised"] == 8
    assert rag["dropped"] == {"type": 1} and rag["after_filters"] == 4 and rag["realised"] == 10
    assert m["sft"]["rows"] == 23
    pref = m["preference"]["sources"][0]
    assert pref["dropped"] == {"sonnet_approved": 1, "invalid: chosen and rejected are identical": 1}
    assert pref["realised"] == 4 and m["preference"]["rows"] == 4
    out = datasets.Dataset.from_parquet(str(files["root"] / "runs" / "t" / "prepare" / "sft.parquet"))
    assert out.column_names == ["messages", "source", "meta"]
    assert sorted(out["source"]).count("grounded_rag_ru_v2") == 10
    roles = {m["role"] for row in out["messages"] for m in row}
    assert roles == {"system", "user", "assistant"}  # bot and documents normalised away
    example = saiga["examples"]
    assert any("saiga.jsonl row 11" in v for v in example.values())


def test_prepare_is_deterministic_and_skips_when_unchanged(files):
    m1 = run_prepare(config(files))
    m2 = run_prepare(config(files))
    assert m2.get("skipped") is True and m2["sft"]["content_hash"] == m1["sft"]["content_hash"]
    m3 = run_prepare(config(files), force=True)
    assert m3["sft"]["content_hash"] == m1["sft"]["content_hash"]


def test_empty_after_filters_names_the_source(files):
    cfg = config(files)
    cfg.data.sft.sources[1].min_score = 10
    with pytest.raises(DataError, match=r"data.sft.sources.1 \(saiga_scored, .*saiga.jsonl\): no rows left after filters"):
        run_prepare(cfg)
    assert not (files["root"] / "runs" / "t" / "prepare" / "manifest.json").exists()


def test_rag_folding_rules():
    raw = _messages(rag_row(0)["conversation"], "conversation")
    folded = fold_rag_conversation(raw, documents_to="system", keep_relevant_ids_turn=True)
    assert [m.role for m in folded] == ["system", "user", "assistant"]
    assert folded[0].content.startswith("Answer using only the documents.\n\n[Документ 0 — Волга]\nВолга — река")
    assert folded[2].content == '{"relevant_doc_ids": [0, 1]}\nОка впадает в Волгу, а Волга течёт в России.'
    folded = fold_rag_conversation(raw, documents_to="user", keep_relevant_ids_turn=False)
    assert [m.role for m in folded] == ["system", "user", "assistant"]
    assert folded[0].content == "Answer using only the documents."
    assert folded[1].content.startswith("[Документ 0 — Волга]") and folded[1].content.endswith("\n\nКуда впадает Ока?")
    assert folded[2].content == "Ока впадает в Волгу, а Волга течёт в России."


def test_holdout_rows_are_written_apart(files):
    cfg = config(files)
    cfg.data.sft.holdout_percent = 20
    m = run_prepare(cfg)
    held = sum(s["held_out"] for s in m["sft"]["sources"])
    assert held == 2 + 2 + 1 and m["sft"]["holdout"]["rows"] == held
    hold = datasets.Dataset.from_parquet(str(files["root"] / "runs" / "t" / "prepare" / "sft_holdout.parquet"))
    train = datasets.Dataset.from_parquet(str(files["root"] / "runs" / "t" / "prepare" / "sft.parquet"))
    key = lambda r: json.dumps(r["messages"], ensure_ascii=False)
    assert not {key(r) for r in hold} & {key(r) for r in train}


def test_home_relative_source_is_hashed_by_content(files, monkeypatch):
    """`~/x.jsonl` is a local file: editing it changes the prepare hash (it is not taken for a hub id)."""
    from rutune.data.prepare import prepare_hash

    monkeypatch.setenv("HOME", str(files["root"]))
    cfg = config(files, sft={"holdout_percent": 0, "sources": [{"name": "saiga_scored", "path": "~/saiga.jsonl",
                                                                 "percent": 100}]})
    before = prepare_hash(cfg)
    rows = (files["root"] / "saiga.jsonl").read_text(encoding="utf-8").splitlines()
    (files["root"] / "saiga.jsonl").write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")
    assert prepare_hash(cfg) != before


def test_each_local_source_is_read_once(files, monkeypatch):
    """The up-front source check hands its loaded rows to the filters: every file is parsed once per prepare."""
    import rutune.data.sources as sources

    checked = []
    real_check = sources.check_local_file
    monkeypatch.setattr(sources, "check_local_file", lambda fs: checked.extend(fs) or real_check(fs))
    run_prepare(config(files))
    assert sorted(checked) == sorted(str(files[k]) for k in ("gm", "saiga", "rag", "pref"))
