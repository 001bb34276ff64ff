"""Run directories: where each stage's artifacts live, atomic writes, and "is this stage done?".

Layout of one experiment (``<output_root>/<name>/``)::

    prepare/sft.parquet, prepare/preference.parquet, prepare/manifest.json
    train/<stage>/checkpoint/ ...        train/<stage>/manifest.json
    eval/<suite>/<model>/...             eval/<suite>/<model>/manifest.json
    report/                              report.md, report.csv, report.html

A stage is done when its ``manifest.json`` exists and records the same ``input_hash`` as the one
computed now (config slice + upstream manifests' hashes + code version). Manifests are the last
thing a stage writes, so a crash leaves no manifest and the stage reruns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from rutune import __version__

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds.

    The temp file lives in the same directory so the final `os.replace` is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-serialisable value, independent of dict ordering (16 hex chars)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_hash(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()[:16]


def input_hash(config_slice: Any, upstream_hashes: list[str] | tuple[str, ...] = ()) -> str:
    """The identity of a stage's inputs: its own config, what it reads, and the code version."""
    return stable_hash({"config": config_slice, "upstream": list(upstream_hashes), "code": __version__})


class RunDir:
    """Paths of one experiment's artifacts. Holds no state beyond the root path."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @classmethod
    def for_experiment(cls, output_root: str | os.PathLike, name: str) -> "RunDir":
        return cls(Path(output_root) / name)

    @property
    def prepare(self) -> Path:
        return self.root / "prepare"

    def train(self, stage_name: str) -> Path:
        return self.root / "train" / stage_name

    def checkpoint(self, stage_name: str) -> Path:
        return self.train(stage_name) / "checkpoint"

    def eval(self, suite: str, model_label: str) -> Path:
        return self.root / "eval" / suite / model_label

    @property
    def report(self) -> Path:
        return self.root / "report"


def write_manifest(stage_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write a stage's manifest last and atomically; `input_hash` must be in it."""
    if "input_hash" not in manifest:
        raise ValueError("a manifest needs an input_hash")
    path = Path(stage_dir) / MANIFEST
    write_json_atomic(path, {**manifest, "rutune_version": __version__})
    return path


def read_manifest(stage_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(stage_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (json.JSONDecodeError, OSError):
        return None


def stage_done(stage_dir: str | os.PathLike, expected_hash: str) -> bool:
    manifest = read_manifest(stage_dir)
    return bool(manifest) and manifest.get("input_hash") == expected_hash


INPUTS_MARKER = "inputs.json"


def started_for(stage_dir: str | os.PathLike) -> str | None:
    """The input hash a stage folder's (possibly unfinished) work belongs to: its inputs marker, else its manifest."""
    marker = Path(stage_dir) / INPUTS_MARKER
    if marker.exists():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            return read_json(marker).get("input_hash")
    return (read_manifest(stage_dir) or {}).get("input_hash")


def mark_started(stage_dir: str | os.PathLike, input_hash_: str) -> None:
    """Record which inputs the work now accumulating in `stage_dir` is for (written before the work starts)."""
    write_json_atomic(Path(stage_dir) / INPUTS_MARKER, {"input_hash": input_hash_})
