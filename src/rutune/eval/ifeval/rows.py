"""Loading ruIFEval rows: a local JSONL file, a hub dataset id, or (no source) the bundled Russian sample.

Every row is validated by `registry.check_row` and named in any error by file and line (or hub id and row
number); keys must be unique. `load_rows` returns a `LoadedRows` that also records what was actually read, so a
caller can report that the bundled sample stood in for the real data.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rutune.eval.ifeval.errors import IfevalError
from rutune.eval.ifeval.registry import check_row

SAMPLE_PATH = Path(__file__).resolve().parents[2] / "samples" / "ruifeval.jsonl"
HUB_ID = "NLP-Core-Team/ruIFEval"
# UNVERIFIED, NOT A PIN: no commit of a hub copy of ruIFEval could be looked up while this was written (the hub is
# unreachable here and no snapshot of its commit list was found). The data's known upstream version is the GitHub
# repository NLP-Core-Team/ruIFEval at commit 9dd2387f8a8ab12a10f3da79097546347e8af7e0 (v0.1, 541 prompts) — a git
# commit, not a hub revision. Replace this with the hub commit hash once verified.
HUB_REVISION_UNVERIFIED = "main"
HUB_REVISIONS = {HUB_ID: HUB_REVISION_UNVERIFIED}
HUB_SPLIT = "train"
_HUB_ID_SHAPE = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class LoadedRows:
    """Validated rows plus where they came from.

    `source`: the file path or hub id read; `revision`: the hub revision asked for (None for files);
    `bundled_sample`: True when no source was given and rutune's own sample file was used instead.
    """

    rows: tuple[dict, ...]
    source: str
    revision: str | None
    bundled_sample: bool


def _unique(rows: list[dict], names: list[str]) -> tuple[dict, ...]:
    seen: dict[int, str] = {}
    for row, name in zip(rows, names):
        if row["key"] in seen:
            raise IfevalError(f"{name}: duplicate key {row['key']} (first at {seen[row['key']]})")
        seen[row["key"]] = name
    if not rows:
        raise IfevalError("no ruIFEval rows found")
    return tuple(rows)


def read_jsonl(path: str | os.PathLike) -> tuple[dict, ...]:
    """Validated rows of a ruIFEval JSONL file (blank lines skipped); errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise IfevalError(f"cannot read ruIFEval rows from {path}: {e}") from None
    rows, names = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name = f"{path.name} line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise IfevalError(f"{name}: not valid JSON ({e.msg} at column {e.colno})") from None
        rows.append(check_row(raw, name))
        names.append(name)
    if not rows:
        raise IfevalError(f"{path}: no ruIFEval rows (the file is empty)")
    return _unique(rows, names)


def read_hub(hub_id: str, revision: str | None) -> tuple[dict, ...]:
    """Validated rows of the hub dataset's train split at `revision` (via `datasets.load_dataset`)."""
    import datasets

    try:
        table = datasets.load_dataset(hub_id, revision=revision, split=HUB_SPLIT)
    except Exception as e:  # network, auth, missing revision...: one line, not the hub client's traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise IfevalError(f"cannot load {hub_id}@{revision} ({HUB_SPLIT}) from the hub: "
                          f"{type(e).__name__}: {first}") from None
    rows, names = [], []
    for index, raw in enumerate(table):
        name = f"{hub_id}@{revision} row {index}"
        rows.append(check_row(raw, name))
        names.append(name)
    return _unique(rows, names)


def load_rows(source: str | os.PathLike | None = None, revision: str | None = None) -> LoadedRows:
    """ruIFEval rows from `source`: None (the bundled sample), a local .jsonl path, or a hub dataset id.

    A hub id is loaded at `revision`, else at the revision recorded for it in HUB_REVISIONS (for ruIFEval an
    unverified placeholder, see HUB_REVISION_UNVERIFIED), else at the hub's default branch.
    """
    if source is None:
        if revision is not None:
            raise IfevalError("a revision was given without a source; revisions apply to hub dataset ids only")
        return LoadedRows(read_jsonl(SAMPLE_PATH), str(SAMPLE_PATH), None, True)
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        if revision is not None:
            raise IfevalError(f"{text}: a revision applies to hub dataset ids, not to local files")
        return LoadedRows(read_jsonl(path), str(path), None, False)
    if path.exists() or text.endswith((".jsonl", ".json")) or not _HUB_ID_SHAPE.fullmatch(text):
        raise IfevalError(f"{text}: not a ruIFEval .jsonl file that exists, nor a hub dataset id like {HUB_ID!r}")
    revision = revision or HUB_REVISIONS.get(text)
    return LoadedRows(read_hub(text, revision), text, revision, False)
