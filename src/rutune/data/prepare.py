"""The prepare stage: adapters → filters → mixture → parquet + manifest.

Two passes keep memory flat for 10⁵–10⁶ rows: pass 1 streams each source through its adapter and the
filters into a per-source parquet of surviving rows (counting every drop by reason); pass 2 plans the
mixture from the surviving counts and writes the interleaved result through `datasets`' index mapping,
which reads the memory-mapped parquet in batches. Outputs are renamed into place only when complete, and
the manifest is written last, so an interrupted prepare simply reruns.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from rutune.data import contamination
from rutune.data.filters import Deduplicator, record_text, russian_share
from rutune.data.mixture import holdout_split, interleave, plan_source
from rutune.data.sources import SOURCES, DataError, describe_location, iter_records, load_source
from rutune.rundir import (RunDir, atomic_path, file_hash, read_manifest, stable_hash, stage_done, stage_identity,
                           write_json_atomic, write_manifest)

CHUNK_ROWS = 2000
OUTPUTS = {"sft": "sft.parquet", "preference": "preference.parquet"}


def _source_fingerprint(src) -> dict:
    """What identifies a source's bytes: content hash of local files, hub id@revision otherwise."""
    loc = describe_location(src)
    path = Path(loc)
    if path.is_file():
        return {"file": loc, "sha": file_hash(path)}
    if path.is_dir():
        return {"dir": loc, "sha": stable_hash(sorted((str(p), file_hash(p)) for p in path.rglob("*") if p.is_file()))}
    return {"hub": loc}


def prepare_hash(cfg, eval_set_inputs: list[str] = ()) -> str:
    """The prepare stage's identity: the `data:` block, the seed, every source's content (local files) or hub id at
    its revision, and the identity of the eval sets the contamination check reads (`eval_set_inputs`)."""
    blocks = {k: getattr(cfg.data, k) for k in ("sft", "preference")}
    fingerprints = [SOURCES.get(s.name).derived.fingerprint(s, cfg) if SOURCES.get(s.name).derived is not None
                    else _source_fingerprint(s) for b in blocks.values() if b for s in b.sources]
    slice_ = {"data": cfg.data.model_dump(mode="json"), "seed": cfg.seed, "sources": fingerprints}
    return stage_identity(slice_, upstream=list(eval_set_inputs))


def check_sources(cfg) -> dict[tuple[str, int], tuple]:
    """Open every local source and check its columns (no model, no mixing) before any work starts.

    Returns the loaded `(dataset, where)` by `(block, index)`, so prepare does not read those files again; hub
    sources are not opened here (validate stays offline).
    """
    loaded = {}
    for kind in ("sft", "preference"):
        block = getattr(cfg.data, kind)
        for i, src in enumerate(block.sources if block else []):
            adapter = SOURCES.get(src.name)
            if adapter.kind != kind:
                raise DataError(f"data.{kind}.sources.{i}: {src.name} is a {adapter.kind} source, not {kind}")
            if adapter.derived is not None:  # built from this run's prepared data: checked, not opened
                adapter.derived.check(src, cfg, f"data.{kind}.sources.{i}")
                continue
            if Path(describe_location(src)).exists() or src.path is None:
                loaded[(kind, i)] = load_source(src)
    return loaded


class _ParquetChunks:
    """Append rows to a parquet file in chunks, so a source never sits in memory whole."""

    def __init__(self, path: Path):
        self.path, self.rows, self.writer, self.count = path, [], None, 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table.cast(self.writer.schema))
        self.rows = []

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()


def _filter_source(src, i: int, kind: str, cfg, dedup: Deduplicator, work: Path,
                   loaded: tuple | None) -> tuple[Path | None, dict]:
    """Pass 1 for one source: adapter + filters into `work/<i>.parquet`; returns (path, report)."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    out = _ParquetChunks(work / f"{kind}-{i}-{src.name}.parquet")
    seen = 0
    for record in iter_records(src, cfg.seed, counts, examples, loaded=loaded):
        seen += 1
        reason = None
        if src.min_russian_share is not None and russian_share(record_text(record)) < src.min_russian_share:
            reason = "min_russian_share"
        if reason is None:
            reason = dedup.check(record.first_user_turn())
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
            continue
        out.add(record.to_row())
    out.close()
    report = {
        "source": src.name,
        "short": SOURCES.get(src.name).short,  # the report's label for this source (it reads no registry)
        "location": describe_location(src),
        "rows_read": seen + sum(v for k, v in counts.items() if k not in ("duplicate_exact", "duplicate_near",
                                                                           "min_russian_share")),
        "after_filters": out.count,
        "dropped": dict(sorted(counts.items())),
        "examples": examples,
    }
    if out.count == 0:
        raise DataError(f"data.{kind}.sources.{i} ({src.name}, {report['location']}): no rows left after filters "
                        f"(dropped: {', '.join(f'{k} {v}' for k, v in sorted(counts.items())) or 'none read'})")
    return out.path, report


def _write_selection(parts: list[Path], selections: list[list[int]], order: list[tuple[int, int]], out: Path) -> int:
    """Write rows `order` = [(part, index-into-selection)] from the per-source parquet parts, atomically."""
    import datasets

    dsets = [datasets.Dataset.from_parquet(str(p)) for p in parts]
    offsets, total = [], 0
    for d in dsets:
        offsets.append(total)
        total += len(d)
    merged = datasets.concatenate_datasets(dsets) if len(dsets) > 1 else dsets[0]
    global_idx = [offsets[p] + selections[p][i] for p, i in order]
    selected = merged.select(global_idx)
    with atomic_path(out) as tmp:
        selected.to_parquet(str(tmp))
    return len(selected)


def _prepare_block(kind: str, block, cfg, rd: RunDir, work: Path, loaded: dict) -> dict:
    dedup = Deduplicator(exact=block.dedup.exact, near=block.dedup.near, threshold=block.dedup.near_threshold,
                         shingle_chars=block.dedup.shingle_chars, seed=cfg.seed)
    parts, reports, plans, train_sel, holdout_sel = [], [], [], [], []
    holdout_percent = getattr(block, "holdout_percent", 0)
    for i, src in enumerate(block.sources):
        derived, info = SOURCES.get(src.name).derived, None
        if derived is not None:  # e.g. on_policy: built from the blocks prepared before this one
            *loaded_i, info = derived.load(src, cfg, rd.prepare, f"data.{kind}.sources.{i}")
            loaded[(kind, i)] = tuple(loaded_i)
        path, report = _filter_source(src, i, kind, cfg, dedup, work, loaded.get((kind, i)))
        if derived is not None:  # its own split (on_policy: by the SFT split of the row it came from)
            keep, held = derived.split(path)
            report["generation"] = info
        else:
            keep, held = holdout_split(report["after_filters"], percent=holdout_percent, seed=cfg.seed,
                                       source=src.name)
        plan = plan_source(src.name, len(keep), seed=cfg.seed, percent=src.percent, count=src.count)
        report.update(held_out=len(held), available=len(keep), requested=plan.requested, realised=plan.realised)
        parts.append(path)
        reports.append(report)
        plans.append(plan)
        train_sel.append(keep)
        holdout_sel.append(held)
    order = interleave(plans, seed=cfg.seed)
    out = rd.prepare / OUTPUTS[kind]
    rows = _write_selection(parts, train_sel, order, out)
    result: dict[str, Any] = {"file": OUTPUTS[kind], "rows": rows, "content_hash": file_hash(out), "sources": reports}
    if holdout_percent or any(holdout_sel):
        hold_order = [(p, k) for p, sel in enumerate(holdout_sel) for k in range(len(sel))]
        hold_out = rd.prepare / f"{kind}_holdout.parquet"
        result["holdout"] = {"file": hold_out.name,
                             "rows": _write_selection(parts, holdout_sel, hold_order, hold_out)}
    return result


def run_prepare(cfg, *, force: bool = False, known_hash: str | None = None,
                eval_sets: dict[str, Callable[[], dict[str, str]]] | None = None) -> dict:
    """Run (or skip, when the manifest matches) the prepare stage; returns the manifest.

    `known_hash`: `prepare_hash(cfg)` when the caller computed it (it reads every local source file).
    `eval_sets`: name → items (id → text) of the eval suites named in `data.contamination.eval_sets`, as each
    suite is configured (the caller, which knows the suites, supplies them).
    """
    rd = RunDir.for_experiment(cfg.output_root, cfg.name)
    h = known_hash or prepare_hash(cfg)
    if not force and stage_done(rd.prepare, h):
        manifest = read_manifest(rd.prepare)
        manifest["skipped"] = True
        return manifest
    if cfg.data.sft is None and cfg.data.preference is None:
        raise DataError("data: neither data.sft nor data.preference is configured; nothing to prepare")
    loaded = check_sources(cfg)
    work = rd.prepare / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest: dict[str, Any] = {"input_hash": h, "seed": cfg.seed, "experiment": cfg.name}
    try:
        for kind in ("sft", "preference"):
            block = getattr(cfg.data, kind)
            if block is not None:
                manifest[kind] = _prepare_block(kind, block, cfg, rd, work, loaded)
        if cfg.data.contamination.eval_sets:
            report = contamination.check_prepared(rd.prepare, cfg.data.contamination, eval_sets or {})
            write_json_atomic(rd.prepare / "contamination.json", report)
            manifest["contamination"] = report["summary"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_manifest(rd.prepare, manifest)
    return manifest


def print_summary(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    if manifest.get("skipped"):
        console.print("prepare: inputs unchanged, stage skipped (use --force to redo)")
    for kind in ("sft", "preference"):
        block = manifest.get(kind)
        if not block:
            continue
        table = Table(title=f"{kind}: {block['rows']} rows → {block['file']}", title_justify="left")
        for col in ("source", "read", "kept", "held out", "requested", "realised"):
            table.add_column(col, no_wrap=True)
        for r in block["sources"]:
            table.add_row(r["source"], str(r["rows_read"]), str(r["after_filters"]), str(r["held_out"]),
                          r["requested"], str(r["realised"]))
        console.print(table)
        for r in block["sources"]:
            if r["dropped"]:
                console.print(f"  {r['source']} dropped: " + ", ".join(f"{k} {v}" for k, v in r["dropped"].items()),
                              highlight=False)
    if "contamination" in manifest:
        for name, line in manifest["contamination"].items():
            console.print(f"contamination vs {name}: {line}", highlight=False)
