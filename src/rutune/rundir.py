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


_MODEL_HASHES: dict[tuple, str] = {}


def model_hash(path: str | os.PathLike, suffixes: tuple[str, ...] = (".safetensors", ".json")) -> str:
    """Content hash of a model folder's top-level files with `suffixes` (weights, configs, tokenizer); a hub id
    hashes as its name (the hub pins it, not us). Memoised per (file, size, mtime): a run reads the weights once
    even when several stages or sources ask."""
    p = Path(path)
    if not p.is_dir():
        return stable_hash(["hub", str(path)])
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in suffixes)
    memo = (str(p.resolve()), suffixes, tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if memo not in _MODEL_HASHES:
        _MODEL_HASHES[memo] = stable_hash([(f.name, file_hash(f)) for f in files])
    return _MODEL_HASHES[memo]


def input_hash(config_slice: Any, upstream_hashes: list[str] | tuple[str, ...] = ()) -> str:
    """The identity of a stage's inputs: its own config, what it reads, and the code version."""
    return stable_hash({"config": config_slice, "upstream": list(upstream_hashes), "code": __version__})


def file_fingerprint(path: str | os.PathLike) -> str:
    """`path:content-hash` of a file, `path:tree-hash` of a folder (every file's content), `path:missing` else.

    Stage identities list the fingerprint of every file a stage reads, so an edited prompt, judge profile or
    question file reruns the stage even though its path did not change.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return f"{p}:{file_hash(p)}"
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return f"{p}:" + stable_hash([(str(f.relative_to(p)), file_hash(f)) for f in files])
    return f"{p}:missing"


def stage_identity(config_slice: Any, *, files: list[str | os.PathLike] = (), upstream: list[str] = ()) -> str:
    """The one identity function of every stage: its config slice, the content of every file it reads (by
    `file_fingerprint`), the identities of the stages it builds on, and the code version."""
    return input_hash(config_slice, [*(file_fingerprint(f) for f in files), *upstream])


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


class StageIndex:
    """Finished stages of every experiment under one output root, by kind and identity
    (`<output_root>/.stage-index.json`), so experiments of a sweep that share a stage (the same SFT, the base
    model's evals) link the finished folder instead of redoing it."""

    def __init__(self, output_root: str | os.PathLike):
        self.path = Path(output_root) / ".stage-index.json"

    def _read(self) -> dict:
        return read_json(self.path) if self.path.exists() else {}

    def lookup(self, kind: str, identity: str) -> Path | None:
        hit = self._read().get(f"{kind}:{identity}")
        return Path(hit) if hit and stage_done(hit, identity) else None

    def add(self, kind: str, identity: str, folder: str | os.PathLike) -> None:
        """Record a finished stage; read-modify-write under an exclusive lock, so stages finishing at once in
        separate processes (Slurm jobs) do not drop each other's entries."""
        import fcntl

        key, where = f"{kind}:{identity}", str(Path(folder).resolve())
        if self._read().get(key) == where:  # most stages are already indexed: no lock, no rewrite
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = self._read()
            index[key] = where
            write_json_atomic(self.path, index)

    def link_into(self, kind: str, identity: str, folder: str | os.PathLike) -> bool:
        """If another experiment finished the same stage, hard-link it into `folder`; True when linked."""
        folder = Path(folder)
        if stage_done(folder, identity):
            return False
        hit = self.lookup(kind, identity)
        if hit is None or hit.resolve() == folder.resolve():
            return False
        link_tree(hit, folder)
        return True


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link a finished stage folder into another run (copy where links are not possible), atomically."""
    import shutil

    tmp = dst.with_name(dst.name + ".linking")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, tmp, copy_function=link, ignore=shutil.ignore_patterns("trainer", "*.lock"))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


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
