"""Append-only per-item results (`items.jsonl`) with resume.

Rows are appended and flushed as items finish, so an interrupted eval keeps what it finished. On resume the
reader ignores a torn last line (a crash mid-write) and the writer truncates it away before appending, so the
file never holds half a row followed by a whole one. A small `run.json` beside it records what produced the
rows (a fingerprint of config, data and model); resuming with a different fingerprint is refused rather than
silently mixing two runs' items.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from rutune.rundir import read_json, write_json_atomic

ITEMS = "items.jsonl"
RUN = "run.json"


class ItemsError(ValueError):
    """An items file that cannot be read or resumed; the message names the file (one line)."""


def read_items(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete rows of an items file, in file order; a torn or unparsable last line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno >= len(lines) - 1:  # the last line: a write cut short by a crash
                break
            raise ItemsError(f"{path}: line {lineno} is not JSON (only the last line may be torn)") from None
    return rows


def truncate_torn_tail(path: str | os.PathLike) -> None:
    """Cut an append log back to its last newline (a kill mid-write), so the next append starts a fresh line."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            f.truncate(end)


def append_rows(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Append JSON rows, one per line, and have them on disk (fsync) before returning."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


class ItemsLog:
    """One suite/model output folder's `items.jsonl`: which ids are done, and appending new rows."""

    def __init__(self, out_dir: str | os.PathLike, fingerprint: dict[str, Any]):
        self.dir = Path(out_dir)
        self.path = self.dir / ITEMS
        self.dir.mkdir(parents=True, exist_ok=True)
        run_path = self.dir / RUN
        if run_path.exists() and self.path.exists():
            previous = read_json(run_path).get("fingerprint")
            if previous != json.loads(json.dumps(fingerprint, default=str)):
                raise ItemsError(f"{self.dir}: holds items of a different eval run (config, data or model changed); "
                                "use another --out folder or delete this one")
        write_json_atomic(run_path, {"fingerprint": fingerprint})
        truncate_torn_tail(self.path)
        self.rows = read_items(self.path)
        self.done = {str(r["id"]) for r in self.rows}

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append finished rows and flush them to disk before returning."""
        rows = list(rows)
        if not rows:
            return
        append_rows(self.path, rows)
        self.rows.extend(rows)
        self.done.update(str(r["id"]) for r in rows)

    def ordered(self, ids: list[str]) -> list[dict[str, Any]]:
        """The rows for `ids` in that order (the last row wins if an id was written twice)."""
        by_id = {str(r["id"]): r for r in self.rows}
        return [by_id[i] for i in ids if i in by_id]
