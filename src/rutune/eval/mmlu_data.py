"""ruMMLU data: the two source formats, their loaders (hub with a pinned revision, local files), and domains.

MERA `rummlu` rows: `instruction` (a template with `{text}`, `{option_a..d}`, `{subject}`), `inputs{text,
option_a..d, subject}`, `outputs` ("A".."D", empty on a closed test) and `meta{id, domain}`.
`NLPCoreTeam/mmlu_ru` rows: `question_ru`, `choices_ru` (4), `answer` (0–3 or "A".."D"), one hub config per
subject (the subject comes from the config or folder name, or a `subject` field in a single local file).
Both are parsed into `Question`; every malformed row is an EvalError naming file and row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rutune.data.sources import is_local_path
from rutune.eval.errors import EvalError

LETTERS = ("A", "B", "C", "D")
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "rummlu_mera.jsonl"
MERA_HUB = ("MERA-evaluation/MERA", "rummlu")
MMLU_RU_HUB = "NLPCoreTeam/mmlu_ru"
# Default revisions of the two canonical hub ids (another id loads its main branch unless one is given).
# MERA v1.2 at its README update after the data uploads; mmlu_ru has only a loading script on main, so its
# parquet conversion (branch refs/convert/parquet) is pinned at a commit with all subjects converted.
PINNED_REVISIONS = {MERA_HUB[0]: "05ae2bc1b760ccbcd73b1b94b52daed71b9a53da",
                    MMLU_RU_HUB: "4178e5c3dc58ad09d2b0a2fa0ce78165f53fecc0"}

# MMLU's four reporting categories (the grouping of Hendrycks et al., also used by mmlu_ru's macro score).
_CATEGORY_DOMAINS = {
    "stem": "abstract_algebra astronomy college_biology college_chemistry college_computer_science "
            "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
            "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
            "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
                  "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
                  "prehistory professional_law world_religions",
    "social_sciences": "econometrics high_school_geography high_school_government_and_politics "
                       "high_school_macroeconomics high_school_microeconomics high_school_psychology "
                       "human_sexuality professional_psychology public_relations security_studies sociology "
                       "us_foreign_policy",
    "other": "anatomy business_ethics clinical_knowledge college_medicine global_facts human_aging management "
             "marketing medical_genetics miscellaneous nutrition professional_accounting professional_medicine "
             "virology",
}
CATEGORY = {d: cat for cat, names in _CATEGORY_DOMAINS.items() for d in names.split()}
CATEGORIES = tuple(_CATEGORY_DOMAINS)

# Subject names as they read after "по" in the mmlu_ru header (dative), in rutune's own wording.
SUBJECT_RU = {
    "abstract_algebra": "абстрактной алгебре", "anatomy": "анатомии", "astronomy": "астрономии",
    "business_ethics": "деловой этике", "clinical_knowledge": "клинической медицине",
    "college_biology": "биологии (вуз)", "college_chemistry": "химии (вуз)",
    "college_computer_science": "информатике (вуз)", "college_mathematics": "математике (вуз)",
    "college_medicine": "медицине (вуз)", "college_physics": "физике (вуз)",
    "computer_security": "компьютерной безопасности", "conceptual_physics": "физике (основные понятия)",
    "econometrics": "эконометрике", "electrical_engineering": "электротехнике",
    "elementary_mathematics": "элементарной математике", "formal_logic": "формальной логике",
    "global_facts": "фактам о мире", "high_school_biology": "биологии (школа)",
    "high_school_chemistry": "химии (школа)", "high_school_computer_science": "информатике (школа)",
    "high_school_european_history": "истории Европы (школа)", "high_school_geography": "географии (школа)",
    "high_school_government_and_politics": "государственному устройству и политике (школа)",
    "high_school_macroeconomics": "макроэкономике (школа)", "high_school_mathematics": "математике (школа)",
    "high_school_microeconomics": "микроэкономике (школа)", "high_school_physics": "физике (школа)",
    "high_school_psychology": "психологии (школа)", "high_school_statistics": "статистике (школа)",
    "high_school_us_history": "истории США (школа)", "high_school_world_history": "всемирной истории (школа)",
    "human_aging": "старению человека", "human_sexuality": "сексуальности человека",
    "international_law": "международному праву", "jurisprudence": "юриспруденции",
    "logical_fallacies": "логическим ошибкам", "machine_learning": "машинному обучению",
    "management": "менеджменту", "marketing": "маркетингу", "medical_genetics": "медицинской генетике",
    "miscellaneous": "разным темам", "moral_disputes": "этическим спорам", "moral_scenarios": "этическим ситуациям",
    "nutrition": "питанию", "philosophy": "философии", "prehistory": "доисторической эпохе",
    "professional_accounting": "бухгалтерскому учёту", "professional_law": "праву (профессиональный уровень)",
    "professional_medicine": "медицине (профессиональный уровень)",
    "professional_psychology": "психологии (профессиональный уровень)",
    "public_relations": "связям с общественностью", "security_studies": "проблемам безопасности",
    "sociology": "социологии", "us_foreign_policy": "внешней политике США", "virology": "вирусологии",
    "world_religions": "мировым религиям",
}
DOMAINS = tuple(sorted(CATEGORY))


@dataclass(frozen=True)
class Question:
    id: str
    domain: str
    question: str
    options: tuple[str, str, str, str]
    gold: str | None  # "A".."D"; None on a closed test
    subject: str  # the Russian subject text the prompt names
    instruction: str | None = None  # MERA's per-item template
    meta_id: Any = None  # MERA's `meta.id` as in the row (the id a MERA submission answers under)


def _gold_letter(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 4:
        return LETTERS[value]
    if isinstance(value, str) and value.strip().upper() in LETTERS:
        return value.strip().upper()
    raise EvalError(f"{where}: answer {value!r} is not one of A, B, C, D (or 0–3)")


def _check_domain(domain: Any, where: str) -> str:
    if domain not in CATEGORY:
        raise EvalError(f"{where}: unknown domain {domain!r} (expected one of the 57 MMLU subjects, "
                        "e.g. college_mathematics)")
    return domain


def parse_mera_row(row: dict, where: str) -> Question:
    inputs, meta = row.get("inputs"), row.get("meta")
    if not isinstance(inputs, dict) or not isinstance(meta, dict):
        raise EvalError(f"{where}: a MERA rummlu row needs `inputs` and `meta` objects")
    options = [inputs.get(f"option_{k}") for k in "abcd"]
    present = [o for o in options if isinstance(o, str) and o.strip()]
    if len(present) != 4:
        raise EvalError(f"{where}: a question needs 4 options (option_a..option_d), found {len(present)}")
    text = inputs.get("text")
    if not isinstance(text, str) or not text.strip():
        raise EvalError(f"{where}: `inputs.text` (the question) is missing or empty")
    if "id" not in meta:
        raise EvalError(f"{where}: `meta.id` is missing")
    domain = _check_domain(meta.get("domain"), where)
    instruction = row.get("instruction") or None
    return Question(id=f"rummlu-{meta['id']}", domain=domain, question=text, options=tuple(options),  # type: ignore
                    gold=_gold_letter(row.get("outputs"), where), subject=str(inputs.get("subject") or ""),
                    instruction=instruction, meta_id=meta["id"])


def parse_mmlu_ru_row(row: dict, subject: str, index: int, split: str, where: str) -> Question:
    choices = row.get("choices_ru")
    if not isinstance(choices, (list, tuple)) or len(choices) != 4 or not all(
            isinstance(c, str) and c.strip() for c in choices):
        n = len(choices) if isinstance(choices, (list, tuple)) else 0
        raise EvalError(f"{where}: a question needs 4 options in `choices_ru`, found {n}")
    question = row.get("question_ru")
    if not isinstance(question, str) or not question.strip():
        raise EvalError(f"{where}: `question_ru` is missing or empty")
    domain = _check_domain(subject, where)
    return Question(id=f"mmlu_ru-{domain}-{split}-{index}", domain=domain, question=question,
                    options=tuple(choices), gold=_gold_letter(row.get("answer"), where),  # type: ignore[arg-type]
                    subject=SUBJECT_RU[domain])


def read_rows(path: Path) -> Iterable[tuple[dict, str]]:
    """(row, "file:line") from a .jsonl, .json (list) or .parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield row, f"{path}:row {i}"
        return
    with open(path, encoding="utf-8") as f:
        if path.suffix == ".json":
            data = json.load(f)
            rows = data.get("data", data) if isinstance(data, dict) else data
            for i, row in enumerate(rows, 1):
                yield row, f"{path}:row {i}"
            return
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line), f"{path}:{i}"
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}:{i}: not JSON ({e.msg})") from None


def _data_files(folder: Path, split: str) -> list[Path]:
    found = [p for ext in ("jsonl", "json", "parquet") for p in (folder / f"{split}.{ext}",) if p.exists()]
    found += sorted((folder / split).glob("*.parquet")) if (folder / split).is_dir() else []
    return found


def _load_local(path: Path, fmt: str, split: str) -> list[Question]:
    if path.is_file():
        files = [(path, None)]
    elif fmt == "mera":
        files = [(p, None) for p in _data_files(path, split)]
    else:  # mmlu_ru folder: <subject>/<split>.{jsonl,parquet} or <subject>/<split>/*.parquet
        files = [(p, sub.name) for sub in sorted(path.iterdir()) if sub.is_dir() for p in _data_files(sub, split)]
    if not files:
        raise EvalError(f"{path}: no {split!r} data files found for format {fmt}")
    questions = []
    for file, subject in files:
        for index, (row, where) in enumerate(read_rows(file)):
            if fmt == "mera":
                questions.append(parse_mera_row(row, where))
            else:
                subj = subject or row.get("subject")
                if not subj:
                    raise EvalError(f"{where}: mmlu_ru row without a subject (add `subject` or use "
                                    "<folder>/<subject>/<split>.jsonl)")
                if subject is None and "id" in row:
                    index = row["id"]
                questions.append(parse_mmlu_ru_row(row, subj, index, split, where))
    return questions


def hub_revision(path: str | None, fmt: str, revision: str | None) -> str | None:
    """The revision a hub load uses: the given one, else the pinned one of a canonical id (None: local data).

    Another mmlu_ru-format id defaults to its parquet conversion branch (loading scripts do not run).
    """
    if revision or path is None or is_local_path(path):
        return revision
    if path in PINNED_REVISIONS:
        return PINNED_REVISIONS[path]
    return "refs/convert/parquet" if fmt == "mmlu_ru" else None


def _load_mmlu_ru_subject(name: str, subject: str, split: str, revision: str | None):
    """One subject from a parquet conversion, in either of the converter's layouts."""
    import datasets

    layouts = (f"{subject}/{split}/*.parquet", f"{subject}/mmlu_ru-{split}.parquet")  # current, 2023
    for k, pattern in enumerate(layouts):
        try:
            return datasets.load_dataset(name, data_files={split: pattern}, split=split, revision=revision)
        except FileNotFoundError:
            if k == len(layouts) - 1:
                raise


def _load_hub(name: str, fmt: str, split: str, revision: str | None, domains: list[str] | None) -> list[Question]:
    import datasets

    revision = hub_revision(name, fmt, revision)
    try:
        if fmt == "mera":
            config = MERA_HUB[1] if name == MERA_HUB[0] else None
            ds = datasets.load_dataset(name, config, split=split, revision=revision)
            return [parse_mera_row(row, f"{name}@{revision}:{split}:{i}") for i, row in enumerate(ds)]
        questions = []
        for subject in domains or DOMAINS:
            ds = _load_mmlu_ru_subject(name, subject, split, revision)
            questions += [parse_mmlu_ru_row(row, subject, i, split, f"{name}/{subject}:{split}:{i}")
                          for i, row in enumerate(ds)]
        return questions
    except (FileNotFoundError, ConnectionError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(f"ruMMLU source {name}: cannot load ({first}); pass a local file with --data") from None


def load_questions(path: str | None, fmt: str, split: str = "test", revision: str | None = None,
                   domains: list[str] | None = None) -> list[Question]:
    """Questions from the bundled sample (path None), a local file/folder, or a hub dataset id."""
    if path is None:
        if fmt != "mera":
            raise EvalError("eval.mmlu.path: the bundled sample is in MERA format; give a path for mmlu_ru")
        if not SAMPLE.exists():
            raise EvalError(f"bundled ruMMLU sample {SAMPLE} is missing; pass --data")
        return _load_local(SAMPLE, "mera", split)
    if is_local_path(path):
        local = Path(path).expanduser()
        if not local.exists():
            raise EvalError(f"ruMMLU data {path}: file not found")
        return _load_local(local, fmt, split)
    return _load_hub(path, fmt, split, revision, domains)
