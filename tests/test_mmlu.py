"""ruMMLU: prompt layouts, same-domain seeded shots, one forward per question, metrics, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rutune.eval.backend_base import BackendConfig
from rutune.eval.suites.mmlu import MmluConfig
from rutune.eval.backends import LoglikelihoodRequest, make_backend
from rutune.eval.errors import EvalError
from rutune.items import ItemsError
from rutune.eval.mmlu import build_prompt, draw_shots, mmlu_metrics, run_mmlu, score_questions
from rutune.eval.mmlu_data import Question, load_questions

torch.set_num_threads(2)
DATA = Path(__file__).parent / "data"
MERA = str(DATA / "rummlu_mera_mini.jsonl")
MMLU_RU = str(DATA / "mmlu_ru")


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return make_backend(BackendConfig(batch_size=8), str(tiny_model_dir))


def q(i, domain="philosophy", gold="A", instruction=None):
    return Question(id=f"q{i}", domain=domain, question=f"Вопрос {i}?", options=("а", "б", "в", "г"), gold=gold,
                    subject="философия", instruction=instruction)


def test_mera_layouts():
    instr = "Тема: {subject}.\n{text}\nA {option_a}\nB {option_b}\nC {option_c}\nD {option_d}\nОтвет:"
    query = q(0, instruction=instr)
    assert build_prompt(query, [], "mera") == "Тема: философия.\nВопрос 0?\nA а\nB б\nC в\nD г\nОтвет:"
    shots = [q(1, gold="C", instruction=instr), q(2, gold="D", instruction=instr)]
    assert build_prompt(query, shots, "mera") == (
        "Тема: философия.\nВопрос 1?\nA а\nB б\nC в\nD г\nОтвет: C\n\n"
        "Вопрос 2?\nA) а\nB) б\nC) в\nD) г\nОтвет: D\n\n"
        "Вопрос 0?\nA) а\nB) б\nC) в\nD) г\nОтвет:")


def test_mmlu_ru_layout():
    query = Question(id="x", domain="virology", question="Что?", options=("1", "2", "3", "4"), gold="B",
                     subject="вирусологии")
    shot = Question(id="y", domain="virology", question="Где?", options=("5", "6", "7", "8"), gold="D",
                    subject="вирусологии")
    assert build_prompt(query, [shot], "mmlu_ru") == (
        "Ниже приведены вопросы с множественным выбором (с ответами) по вирусологии.\n\n"
        "Где?\nA. 5\nB. 6\nC. 7\nD. 8\nОтвет: D\n\nЧто?\nA. 1\nB. 2\nC. 3\nD. 4\nОтвет:")


def test_shots_same_domain_seeded_never_self():
    pool = {"philosophy": [q(i) for i in range(6)], "sociology": [q(i + 10, "sociology") for i in range(6)]}
    a = draw_shots(pool["philosophy"][0], pool, 3, seed=1)
    assert a == draw_shots(pool["philosophy"][0], pool, 3, seed=1)
    assert len(a) == 3 and all(s.domain == "philosophy" and s.id != "q0" for s in a)
    assert any(draw_shots(pool["philosophy"][0], pool, 3, seed=s) != a for s in range(2, 6))
    assert len(draw_shots(pool["philosophy"][0], pool, 5, seed=0)) == 5
    assert len(draw_shots(pool["philosophy"][0], {"philosophy": pool["philosophy"][:3]}, 5, seed=0)) == 2


def test_letter_tokenisation_tiny(backend):
    """Tiny vocabulary: " A".." D" are single tokens after "Ответ:", with no merge across the boundary.

    (With a smaller vocabulary " B" can be "Ġ"+"B"; the four inputs then still form one prefix chain, which
    is all the one-forward path needs — the chain assertion below covers both cases.)
    """
    tok = backend.tokenizer
    ctx = "Вопрос?\nA) а\nОтвет:"
    ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
    for letter in "ABCD":
        c, cont = backend.encode_pair(ctx, " " + letter)
        assert c == ctx_ids  # no merge across the context/answer boundary
        assert tok.decode(cont) == " " + letter
        assert tok(" " + letter, add_special_tokens=False)["input_ids"] == cont
        assert len(cont) == 1 and cont != tok(letter, add_special_tokens=False)["input_ids"]
    inputs = [tuple(ctx_ids + backend.encode_pair(ctx, " " + x)[1][:-1]) for x in "ABCD"]
    longest = max(inputs, key=len)
    assert all(longest[: len(i)] == i for i in inputs)


def test_letter_tokenisation_qwen(qwen_tokenizer):
    """Qwen2.5's real vocabulary: " A".." D" are single tokens, distinct from "A".."D", after "Ответ:"."""
    from rutune.eval.backends import encode_pair

    ctx = "Что изучает эпистемология?\nA) знание\nB) красоту\nC) право\nD) погоду\nОтвет:"
    spaced = [qwen_tokenizer(" " + x, add_special_tokens=False)["input_ids"] for x in "ABCD"]
    bare = [qwen_tokenizer(x, add_special_tokens=False)["input_ids"] for x in "ABCD"]
    assert all(len(s) == 1 for s in spaced) and all(len(b) == 1 for b in bare)
    assert {s[0] for s in spaced}.isdisjoint({b[0] for b in bare})
    ctx_ids = qwen_tokenizer(ctx, add_special_tokens=False)["input_ids"]
    for letter, ids in zip("ABCD", spaced):
        assert encode_pair(qwen_tokenizer, ctx, " " + letter) == (ctx_ids, ids)


def test_one_forward_per_question_and_same_scores_as_separate_requests(backend):
    questions = load_questions(MERA, "mera")
    items = [(x, build_prompt(x, [], "mera"), 0) for x in questions]
    backend.n_forward_rows = 0
    rows = score_questions(backend, items)
    assert backend.n_forward_rows == len(questions)
    for (x, ctx, _), row in zip(items, rows):
        separate = [backend.loglikelihood([LoglikelihoodRequest(ctx, " " + L)])[0].logprob for L in "ABCD"]
        assert row["logprobs"] == pytest.approx(separate, abs=1e-4)
        assert row["pred"] == "ABCD"[max(range(4), key=lambda j: separate[j])]
        assert row["correct"] == int(row["pred"] == x.gold)


def test_metrics_by_hand():
    rows = [{"id": str(i), "domain": d, "correct": c} for i, (d, c) in enumerate(
        [("philosophy", 1), ("philosophy", 0), ("virology", 1), ("college_mathematics", 1),
         ("college_mathematics", 1), ("college_mathematics", 0), ("sociology", 0), ("anatomy", 0)])]
    metrics, extra = mmlu_metrics(rows, rounds=200)
    assert metrics["accuracy"]["value"] == pytest.approx(4 / 8)
    # categories: humanities 0.5; other = mean(virology 1, anatomy 0) = 0.5; stem 2/3; social 0.
    assert extra["per_category"] == pytest.approx({"stem": 2 / 3, "humanities": 0.5, "social_sciences": 0.0,
                                                   "other": 0.5})
    assert metrics["macro"]["value"] == pytest.approx((2 / 3 + 0.5 + 0 + 0.5) / 4)
    assert metrics["accuracy"]["ci_low"] <= 0.5 <= metrics["accuracy"]["ci_high"]
    assert metrics["accuracy"]["item_key"] == "correct" and metrics["macro"]["item_key"] is None


def test_mmlu_ru_folder_loader_and_run(backend, tmp_path):
    test = load_questions(MMLU_RU, "mmlu_ru", "test")
    dev = load_questions(MMLU_RU, "mmlu_ru", "dev")
    assert len(test) == 12 and len(dev) == 8
    assert test[0].id == "mmlu_ru-college_mathematics-test-0" and test[0].gold == "A"
    assert test[0].subject == "математике (вуз)"
    cfg = MmluConfig(path=MMLU_RU, format="mmlu_ru", shots=2)
    res = run_mmlu(cfg, BackendConfig(), "tiny", tmp_path, backend=backend)
    rows = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["n_shots"] == 2 for r in rows)
    assert res["metrics"]["accuracy"]["value"] == pytest.approx(sum(r["correct"] for r in rows) / 12)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(res))
    assert set(res["extra"]["per_category"]) == {"stem", "humanities", "social_sciences", "other"}


class Interrupting:
    """Wraps a backend; raises on the n-th loglikelihood call and counts requests."""

    def __init__(self, inner, fail_on: int | None):
        self.inner, self.fail_on, self.calls, self.requests = inner, fail_on, 0, 0
        self.tokenizer = inner.tokenizer

    def loglikelihood(self, reqs):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise KeyboardInterrupt
        self.requests += len(reqs)
        return self.inner.loglikelihood(reqs)


def test_resume_after_interrupt_gives_same_results(backend, tmp_path):
    cfg = MmluConfig(path=MERA, shots=1)
    full = run_mmlu(cfg, BackendConfig(), "tiny", tmp_path / "full", backend=backend, chunk_questions=6)
    flaky = Interrupting(backend, fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        run_mmlu(cfg, BackendConfig(), "tiny", tmp_path / "cut", backend=flaky, chunk_questions=6)
    with open(tmp_path / "cut" / "items.jsonl", "a") as f:
        f.write('{"id": "rummlu-99", "dom')  # a torn line, as a crash mid-write leaves it
    again = Interrupting(backend, fail_on=None)
    resumed = run_mmlu(cfg, BackendConfig(), "tiny", tmp_path / "cut", backend=again, chunk_questions=6)
    assert again.requests == 4 * (20 - 12)
    assert resumed["metrics"] == full["metrics"]
    lines = (tmp_path / "cut" / "items.jsonl").read_text().splitlines()
    assert len(lines) == 20 and all(json.loads(x) for x in lines)
    with pytest.raises(ItemsError, match="different eval run"):
        run_mmlu(MmluConfig(path=MERA, shots=2), BackendConfig(), "tiny", tmp_path / "cut", backend=backend)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def mera_row(i=0, **over):
    row = {"instruction": "", "inputs": {"text": "Вопрос?", "option_a": "1", "option_b": "2", "option_c": "3",
                                         "option_d": "4", "subject": "т"},
           "outputs": "A", "meta": {"id": i, "domain": "virology"}}
    row.update(over)
    return row


def test_bad_input(tmp_path):
    three = mera_row(1)
    three["inputs"] = {**three["inputs"], "option_d": ""}
    path = write_rows(tmp_path / "three.jsonl", [mera_row(0), three])
    with pytest.raises(EvalError, match=r"three.jsonl:2: a question needs 4 options .*found 3"):
        load_questions(path, "mera")
    path = write_rows(tmp_path / "dom.jsonl", [mera_row(0, meta={"id": 0, "domain": "astrology"})])
    with pytest.raises(EvalError, match=r"dom.jsonl:1: unknown domain 'astrology'"):
        load_questions(path, "mera")
    path = write_rows(tmp_path / "gold.jsonl", [mera_row(0, outputs="E")])
    with pytest.raises(EvalError, match=r"gold.jsonl:1: answer 'E'"):
        load_questions(path, "mera")
    with pytest.raises(EvalError, match="unknown domain 'astrology'"):
        run_mmlu(MmluConfig(path=MERA, domains=["astrology"]), BackendConfig(), "tiny", tmp_path / "o")
    with pytest.raises(EvalError, match="no questions for domain 'anatomy'"):
        run_mmlu(MmluConfig(path=MERA, domains=["anatomy"]), BackendConfig(), "tiny", tmp_path / "o")
    with pytest.raises(EvalError, match="file not found"):
        load_questions(str(tmp_path / "missing.jsonl"), "mera")
    with pytest.raises(EvalError, match="folder not found"):
        run_mmlu(MmluConfig(path=MERA), BackendConfig(), str(tmp_path / "no-model"), tmp_path / "o2")


def test_closed_test_rows_are_not_counted(backend, tmp_path):
    path = write_rows(tmp_path / "closed.jsonl", [mera_row(0), mera_row(1, outputs="")])
    res = run_mmlu(MmluConfig(path=path), BackendConfig(), "tiny", tmp_path / "o",
                   backend=backend)
    assert res["metrics"]["accuracy"]["n_valid"] == 1 and res["metrics"]["accuracy"]["n_total"] == 2


def test_hub_code_paths_on_local_repo_layouts(tmp_path, monkeypatch):
    """The real `load_dataset` calls for both formats, on repos laid out like the hub's parquet/jsonl trees."""
    import datasets
    import pyarrow as pa

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    import pyarrow.parquet as pq

    from rutune.eval.mmlu_data import _load_hub

    (tmp_path / "mmlu_ru" / "virology" / "test").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"question_ru": "Что?", "choices_ru": ["a", "b", "c", "d"], "answer": 1}]),
                   tmp_path / "mmlu_ru" / "virology" / "test" / "0000.parquet")
    got = _load_hub(str(tmp_path / "mmlu_ru"), "mmlu_ru", "test", None, ["virology"])
    assert [(x.id, x.gold, x.subject) for x in got] == [("mmlu_ru-virology-test-0", "B", "вирусологии")]
    (tmp_path / "mera").mkdir()
    (tmp_path / "mera" / "test.jsonl").write_text(Path(MERA).read_text())
    assert len(_load_hub(str(tmp_path / "mera"), "mera", "test", None, None)) == 20


def test_mmlu_ru_2023_parquet_layout(tmp_path, monkeypatch):
    """The pinned mmlu_ru conversion keeps `<subject>/mmlu_ru-<split>.parquet`: loaded when `<split>/` has none."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rutune.eval.mmlu_data import _load_hub

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    (tmp_path / "repo" / "virology" / "test").mkdir(parents=True)  # duckdb index folder: no parquet inside
    (tmp_path / "repo" / "virology" / "test" / "index.duckdb").write_bytes(b"")
    pq.write_table(pa.Table.from_pylist([{"question_ru": "Что?", "choices_ru": ["a", "b", "c", "d"], "answer": 3}]),
                   tmp_path / "repo" / "virology" / "mmlu_ru-test.parquet")
    got = _load_hub(str(tmp_path / "repo"), "mmlu_ru", "test", None, ["virology"])
    assert [(x.id, x.gold) for x in got] == [("mmlu_ru-virology-test-0", "D")]


def test_canonical_hub_ids_load_pinned_revisions(backend, tmp_path, monkeypatch):
    """MERA and mmlu_ru load fixed commits unless a revision is given; results.json records the one used."""
    import datasets

    from rutune.eval import mmlu_data

    seen = []
    mera_rows = [json.loads(x) for x in Path(MERA).read_text().splitlines()]

    def fake_load(name, config=None, split=None, revision=None, data_files=None):
        seen.append((name, config, revision, data_files))
        if name == mmlu_data.MERA_HUB[0]:
            return mera_rows
        return [{"question_ru": "Что?", "choices_ru": ["a", "b", "c", "d"], "answer": 0}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert len(load_questions("MERA-evaluation/MERA", "mera")) == len(mera_rows)
    load_questions("NLPCoreTeam/mmlu_ru", "mmlu_ru", domains=["virology"])
    load_questions("NLPCoreTeam/mmlu_ru", "mmlu_ru", revision="abc", domains=["virology"])
    load_questions("someone/mmlu_ru_copy", "mmlu_ru", domains=["virology"])
    assert seen == [
        ("MERA-evaluation/MERA", "rummlu", "05ae2bc1b760ccbcd73b1b94b52daed71b9a53da", None),
        ("NLPCoreTeam/mmlu_ru", None, "4178e5c3dc58ad09d2b0a2fa0ce78165f53fecc0", {"test": "virology/test/*.parquet"}),
        ("NLPCoreTeam/mmlu_ru", None, "abc", {"test": "virology/test/*.parquet"}),
        ("someone/mmlu_ru_copy", None, "refs/convert/parquet", {"test": "virology/test/*.parquet"})]
    res = run_mmlu(MmluConfig(path="MERA-evaluation/MERA", limit=2), BackendConfig(), "tiny",
                   tmp_path / "o", backend=backend)
    assert res["extra"]["revision"] == "05ae2bc1b760ccbcd73b1b94b52daed71b9a53da"


def test_bundled_sample_loads_and_runs_five_shot(backend, tmp_path):
    from rutune.eval.mmlu_data import SAMPLE

    if not SAMPLE.exists():
        pytest.skip("bundled ruMMLU sample not written yet")
    questions = load_questions(None, "mera")
    assert len(questions) >= 80 and len({x.domain for x in questions}) >= 10
    res = run_mmlu(MmluConfig(shots=5, limit=12), BackendConfig(), "tiny", tmp_path,
                   backend=backend)
    rows = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["n_shots"] == 5 for r in rows)
    assert res["extra"]["source"] == "bundled:rummlu_mera.jsonl"


def test_limit_does_not_shrink_the_shot_pool(backend, tmp_path):
    run_mmlu(MmluConfig(path=MERA, shots=4, limit=2), BackendConfig(), "tiny", tmp_path,
             backend=backend)
    rows = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert [r["n_shots"] for r in rows] == [4, 4]  # 5 questions in that domain: 4 others, beyond the limit of 2
