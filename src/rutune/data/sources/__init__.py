"""Dataset sources: one module per dataset in this package, each declaring `SOURCE = Source(...)` — its settings
model (the config keys of a `data.*.sources` entry), hub id and pinned revision, the raw columns it reads, the
adapter from raw rows to canonical records and its own filters, and its bundled sample file.

Every adapter reads the same way: `datasets.load_dataset(hub_id, revision=…, split=…)` for the hub, and
`datasets.load_dataset("json" | "parquet", data_files=…)` for a local file with the same schema (the bundled
samples are such files). Source-independent filters live in `rutune.data.filters`. The config union, `prepare`
and the samples test iterate `SOURCES`; adding a dataset is one module here plus its sample file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from rutune.data.sources._common import SAMPLES, DataError, Source, SourceBase
from rutune.records import Conversation, PreferencePair, RecordError
from rutune.registry import Registry

SOURCES: Registry[Source] = Registry("source", __name__, "SOURCE")


# ---------------------------------------------------------------- reading
def describe_location(cfg) -> str:
    """Where a source's rows come from, for messages: a file path, a hub id@revision, or the bundled sample."""
    adapter = SOURCES.get(cfg.name)
    if adapter.derived is not None:
        return adapter.derived.describe(cfg)
    if cfg.path is None:
        return str(adapter.sample)
    if is_local_path(cfg.path):
        return str(Path(cfg.path).expanduser())
    return f"{cfg.path}@{cfg.revision or adapter.revision or 'main'}"


def is_local_path(path: str) -> bool:
    """Local data rather than a hub id: an existing path, or one written like a path or a data file.

    A missing `./x`, `/x` or `x.jsonl` is then reported as a missing file, not as a hub id that cannot load.
    """
    return Path(path).expanduser().exists() or path.startswith(("/", ".", "~")) or path.endswith(
        (".jsonl", ".json", ".parquet"))


def _local_files(path: Path) -> tuple[str, list[str]]:
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl", ".json"))
        if not files:
            raise DataError(f"{path}: folder holds no .parquet/.jsonl/.json files")
    elif path.is_file():
        files = [str(path)]
    else:
        raise DataError(f"{path}: file not found")
    kinds = {"parquet" if f.endswith(".parquet") else "json" for f in files}
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes parquet and json files; keep one format per source")
    return kinds.pop(), files


def check_local_file(files: list[str]) -> None:
    """Fail early, naming the file and line, on bytes that are not UTF-8 or JSON lines that do not parse."""
    for f in files:
        if not f.endswith((".jsonl", ".json")):
            continue
        with open(f, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{f}:{lineno}: not UTF-8 (byte {e.start} of the line)") from None
                if f.endswith(".jsonl") and text.strip():
                    try:
                        json.loads(text)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{f}:{lineno}: invalid JSON ({e.msg})") from None


def load_source(cfg):
    """Load a source's raw rows as a `datasets.Dataset` (memory-mapped Arrow, not held in RAM)."""
    import datasets

    adapter = SOURCES.get(cfg.name)
    datasets.disable_progress_bars()
    if cfg.path is None or is_local_path(cfg.path):
        path = Path(cfg.path).expanduser() if cfg.path else adapter.sample
        kind, files = _local_files(path)
        check_local_file(files)
        try:
            ds = datasets.load_dataset(kind, data_files=files, split="train")
        except Exception as e:  # datasets wraps parse errors in several types
            raise DataError(f"{path}: cannot read as {kind}: {str(e).splitlines()[0]}") from None
        where = str(path)
    else:
        revision = cfg.revision or adapter.revision
        where = f"{cfg.path}@{revision}"
        try:
            ds = datasets.load_dataset(cfg.path, revision=revision, split=cfg.split)
        except Exception as e:
            raise DataError(f"{where}: cannot load from the hub ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    missing = sorted(adapter.columns - set(ds.column_names))
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)} for source {cfg.name}; "
                        f"found {', '.join(ds.column_names)}")
    return ds, where


def iter_records(cfg, seed: int, counts: dict[str, int], examples: dict[str, str], *,
                 loaded: tuple | None = None) -> Iterator[Conversation | PreferencePair]:
    """Yield valid records of one source, counting each drop by reason (and keeping the first example).

    `loaded`: the source's `load_source(cfg)` result when the caller already has it.
    """
    adapter = SOURCES.get(cfg.name)
    ds, where = loaded or load_source(cfg)
    for i, row in enumerate(ds):
        reason = adapter.drop_reason(row, cfg, seed)
        if reason is None:
            try:
                record = adapter.to_record(row, cfg)
            except RecordError as e:
                reason = "invalid: " + re.sub(r"turn \d+", "turn N", str(e))
                examples.setdefault(reason, f"{where} row {i}: {e}")
            else:
                yield _with_row(record, i)
                continue
        counts[reason] = counts.get(reason, 0) + 1


def _with_row(record, index: int):
    record.meta["row"] = index
    return record



def fold_rag_conversation(*args, **kwargs):
    """Grounded-RAG's fold of the `documents` role (re-exported from its source module)."""
    from rutune.data.sources.grounded_rag_ru_v2 import fold_rag_conversation as fold

    return fold(*args, **kwargs)


__all__ = ["DataError", "SAMPLES", "SOURCES", "Source", "SourceBase", "check_local_file", "describe_location",
           "fold_rag_conversation", "is_local_path", "iter_records", "load_source"]
