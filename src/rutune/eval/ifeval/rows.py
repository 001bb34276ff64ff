"""Loading ruIFEval rows: a local JSONL file, a pinned URL, a hub dataset id, or (no source) the bundled sample.

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
# ruIFEval's data at a pinned upstream commit: the GitHub repository NLP-Core-Team/ruIFEval at v0.1 (541 prompts;
# llmtf_open ships a byte-identical copy). The name HUB_ID without a revision means this file, fetched once over
# HTTP and cached (`rutune.eval.upstream`); a commit URL cannot change under us, so the identity is the URL.
UPSTREAM_COMMIT = "9dd2387f8a8ab12a10f3da79097546347e8af7e0"
PINNED_URL = f"https://raw.githubusercontent.com/NLP-Core-Team/ruIFEval/{UPSTREAM_COMMIT}/data/ruIFEval_v0.1.jsonl"
HUB_SPLIT = "train"
_HUB_ID_SHAPE = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class LoadedRows:
    """Validated rows plus where they came from.

    `source`: the file path, URL or hub id read; `revision`: the hub revision asked for (None for files/URLs);
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


def resolve_source(source: str | os.PathLike | None, revision: str | None = None) -> str | None:
    """What `source` reads: `HUB_ID` without a revision stands for the pinned upstream file (PINNED_URL)."""
    if source is not None and os.fspath(source) == HUB_ID and revision is None:
        return PINNED_URL
    return None if source is None else os.fspath(source)


def load_rows(source: str | os.PathLike | None = None, revision: str | None = None) -> LoadedRows:
    """ruIFEval rows from `source`: None (the bundled sample), a local .jsonl path, an http(s) URL (downloaded
    once, cached), `NLP-Core-Team/ruIFEval` (= PINNED_URL, ruIFEval v0.1 at its upstream commit) or another hub
    dataset id loaded at `revision` (the hub's default branch when none is given).
    """
    from rutune.eval.errors import EvalError
    from rutune.eval.upstream import fetch, is_url

    if source is None:
        if revision is not None:
            raise IfevalError("a revision was given without a source; revisions apply to hub dataset ids only")
        return LoadedRows(read_jsonl(SAMPLE_PATH), str(SAMPLE_PATH), None, True)
    text = resolve_source(source, revision)
    if is_url(text):
        if revision is not None:
            raise IfevalError(f"{text}: a revision applies to hub dataset ids, not to URLs (put the commit in the URL)")
        try:
            path = fetch(text)
        except EvalError as e:
            raise IfevalError(str(e)) from None
        return LoadedRows(read_jsonl(path), text, None, False)
    path = Path(text).expanduser()
    if path.is_file():
        if revision is not None:
            raise IfevalError(f"{text}: a revision applies to hub dataset ids, not to local files")
        return LoadedRows(read_jsonl(path), str(path), None, False)
    if path.exists() or text.endswith((".jsonl", ".json")) or not _HUB_ID_SHAPE.fullmatch(text):
        raise IfevalError(f"{text}: not a ruIFEval .jsonl file that exists, nor a hub dataset id like {HUB_ID!r}")
    return LoadedRows(read_hub(text, revision), text, revision, False)
