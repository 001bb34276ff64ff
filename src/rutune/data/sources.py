"""One small adapter per dataset: raw rows in the hub schema → canonical records.

Every adapter reads the same way: `datasets.load_dataset(hub_id, revision=…, split=…)` for the hub, and
`datasets.load_dataset("json" | "parquet", data_files=…)` for a local file with the same schema (the bundled
samples are such files). Source-specific filters that need raw columns (scores, flags, language) are
`drop_reason` functions here; source-independent filters live in `filters.py`.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rutune.records import Conversation, Message, PreferencePair, RecordError, validate_turns

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


class DataError(ValueError):
    """Bad data input (file, columns, empty result); the message names the file or source."""


@dataclass(frozen=True)
class Adapter:
    name: str
    kind: str  # "sft" | "preference"
    hub_id: str | None
    revision: str | None  # pinned default; the config may override
    columns: frozenset[str]  # columns the adapter reads (a file missing any is rejected)
    to_record: Callable[[dict, Any], Conversation | PreferencePair]
    drop_reason: Callable[[dict, Any, int], str | None]


# ---------------------------------------------------------------- shared helpers
def _messages(raw: Any, where: str) -> tuple[Message, ...]:
    """Normalise a list of {role, content} (roles `bot`→`assistant`); `where` names the column for errors."""
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise RecordError(f"{where} is not a list of messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RecordError(f"{where}[{i}] is not a {{role, content}} message")
        role = {"bot": "assistant", "human": "user"}.get(m["role"], m["role"])
        content = m["content"] if isinstance(m["content"], str) else ""
        out.append(Message(role, content.replace("\xa0", " ")))
    return tuple(out)


def _conversation(row: dict, column: str, source: str, meta: dict) -> Conversation:
    messages = _messages(row.get(column), column)
    validate_turns(messages, must_end_with="assistant")
    return Conversation(messages, source, meta)


def _seeded_unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from the parts (hash-based, so independent of row order)."""
    return zlib.crc32(json.dumps(parts, ensure_ascii=False, default=str).encode()) / 2**32


# ---------------------------------------------------------------- GrandMaster-PRO-MAX
def _gm_record(row: dict, cfg) -> Conversation:
    meta = {k: row.get(k) for k in ("source", "cluster", "prompt_lang", "answer_lang", "answer_tokens")}
    return _conversation(row, "conversation", "grandmaster_pro_max", meta)


def _gm_drop(row: dict, cfg, seed: int) -> str | None:
    if cfg.prompt_lang is not None and row.get("prompt_lang") not in cfg.prompt_lang:
        return "prompt_lang"
    if cfg.answer_lang is not None and row.get("answer_lang") not in cfg.answer_lang:
        return "answer_lang"
    if cfg.max_answer_tokens is not None and (row.get("answer_tokens") or 0) > cfg.max_answer_tokens:
        return "max_answer_tokens"
    return None


# ---------------------------------------------------------------- saiga_scored
# Saiga's own `is_bad_by_regex` flag is trusted; we do not re-run its substring list.
def _saiga_record(row: dict, cfg) -> Conversation:
    meta = {k: row.get(k) for k in ("source", "opus_score", "language", "sonnet_topic", "sonnet_complexity")}
    return _conversation(row, "messages", "saiga_scored", meta)


def _saiga_drop(row: dict, cfg, seed: int) -> str | None:
    if cfg.min_score is not None and (row.get("opus_score") or 0) < cfg.min_score:
        return "min_score"
    if cfg.exclude_regex and row.get("is_bad_by_regex"):
        return "is_bad_by_regex"
    if cfg.language is not None and row.get("language") not in cfg.language:
        return "language"
    return None


# ---------------------------------------------------------------- Grounded-RAG-RU-v2
RELEVANT_IDS = re.compile(r'^\s*\{\s*"relevant_doc_ids"\s*:')


def _format_documents(content: str) -> str:
    """Render the `documents` JSON list as plain text the model reads (doc id, title, content)."""
    try:
        docs = json.loads(content)
    except json.JSONDecodeError as e:
        raise RecordError(f"documents turn is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(docs, list) or not all(isinstance(d, dict) and "content" in d for d in docs):
        raise RecordError("documents turn is not a JSON list of {doc_id, title, content}")
    parts = []
    for d in docs:
        title = f" — {d['title']}" if d.get("title") else ""
        parts.append(f"[Документ {d.get('doc_id')}{title}]\n{d['content']}")
    return "\n\n".join(parts)


def fold_rag_conversation(messages: tuple[Message, ...], *, documents_to: str, keep_relevant_ids_turn: bool):
    """Fold the `documents` role into a standard chat (chat templates know no `documents` role).

    documents_to="system": the formatted documents are appended to the system prompt (created if absent).
    documents_to="user": they are prepended to the next user turn.
    The two closing assistant turns (relevant-ids JSON, then the answer) either stay as a single assistant turn
    joined by a newline (keep_relevant_ids_turn=True, so the model learns to cite ids first), or the ids turn is
    dropped and only the answer is trained.
    """
    out: list[Message] = []
    pending_docs: list[str] = []
    for m in messages:
        if m.role == "documents":
            text = _format_documents(m.content)
            if documents_to == "system":
                if out and out[0].role == "system":
                    out[0] = Message("system", out[0].content + "\n\n" + text)
                else:
                    out.insert(0, Message("system", text))
            else:
                pending_docs.append(text)
        elif m.role == "user" and pending_docs:
            out.append(Message("user", "\n\n".join(pending_docs) + "\n\n" + m.content))
            pending_docs.clear()
        elif m.role == "assistant" and out and out[-1].role == "assistant":
            # The second of the two closing assistant turns.
            prev = out.pop()
            if keep_relevant_ids_turn or not RELEVANT_IDS.match(prev.content):
                out.append(Message("assistant", prev.content + "\n" + m.content))
            else:
                out.append(m)
        else:
            out.append(m)
    return tuple(out)


def _rag_record(row: dict, cfg) -> Conversation:
    raw = _messages(row.get("conversation"), "conversation")
    folded = fold_rag_conversation(raw, documents_to=cfg.documents_to, keep_relevant_ids_turn=cfg.keep_relevant_ids_turn)
    validate_turns(folded, must_end_with="assistant")
    meta = {"id": row.get("id"), "type": row.get("type"), "cluster": row.get("cluster"), "docs_count": row.get("docs_count")}
    return Conversation(folded, "grounded_rag_ru_v2", meta)


def _rag_drop(row: dict, cfg, seed: int) -> str | None:
    if cfg.types is not None and row.get("type") not in cfg.types:
        return "type"
    return None


# ---------------------------------------------------------------- saiga_preferences
def _single_reply(raw: Any, column: str) -> str:
    msgs = _messages(raw if not isinstance(raw, str) else [{"role": "assistant", "content": raw}], column)
    if len(msgs) != 1 or msgs[0].role != "assistant":
        raise RecordError(f"{column} must be exactly one assistant message")
    if not msgs[0].content.strip():
        raise RecordError(f"{column} is empty")
    return msgs[0].content


def _pref_record(row: dict, cfg) -> PreferencePair:
    prompt = _messages(row.get("prompt"), "prompt")
    validate_turns(prompt, must_end_with="user")
    chosen = _single_reply(row.get("chosen"), "chosen")
    rejected = _single_reply(row.get("rejected"), "rejected")
    if chosen.strip() == rejected.strip():
        raise RecordError("chosen and rejected are identical")
    meta = {k: row.get(k) for k in ("chosen_model", "rejected_model", "source")}
    return PreferencePair(prompt, chosen, rejected, "saiga_preferences", meta)


def _pref_drop(row: dict, cfg, seed: int) -> str | None:
    if cfg.sonnet_approved_only and not row.get("sonnet_approved"):
        return "sonnet_approved"
    if cfg.exclude_regex and row.get("is_bad_by_regex"):
        return "is_bad_by_regex"
    if cfg.length_ratio is not None:
        # Saiga's rule: character length of str(list); such pairs are dropped with a probability.
        chosen_len, rejected_len = len(str(row.get("chosen"))), len(str(row.get("rejected")))
        if chosen_len > cfg.length_ratio * rejected_len:
            if _seeded_unit(seed, "length_ratio", row.get("prompt")) < cfg.length_ratio_drop_probability:
                return "length_ratio"
    return None


# ---------------------------------------------------------------- generic chat file
def _chat_record(row: dict, cfg) -> Conversation:
    return _conversation(row, "messages", "chat_messages", {})


def _no_drop(row: dict, cfg, seed: int) -> str | None:
    return None


REGISTRY: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("grandmaster_pro_max", "sft", "Vikhrmodels/GrandMaster-PRO-MAX",
                "de9cc765d834f6d14f03155fe9c78b0b6c992b4c", frozenset({"conversation", "prompt_lang", "answer_lang"}),
                _gm_record, _gm_drop),
        Adapter("saiga_scored", "sft", "IlyaGusev/saiga_scored", "fbbd5d012fd7c6731d28ca52b12b5f7e29846a08",
                frozenset({"messages", "opus_score", "is_bad_by_regex", "language"}), _saiga_record, _saiga_drop),
        Adapter("grounded_rag_ru_v2", "sft", "Vikhrmodels/Grounded-RAG-RU-v2", "91fc52408e80bea2fe42543a980edabfe92821e3",
                frozenset({"conversation", "type"}), _rag_record, _rag_drop),
        Adapter("saiga_preferences", "preference", "IlyaGusev/saiga_preferences", "4042c2f3d79f7674f8d1dc31f08cc9b2f89a3ead",
                frozenset({"prompt", "chosen", "rejected", "sonnet_approved", "is_bad_by_regex"}), _pref_record,
                _pref_drop),
        Adapter("chat_messages", "sft", None, None, frozenset({"messages"}), _chat_record, _no_drop),
    )
}


# ---------------------------------------------------------------- reading
def describe_location(cfg) -> str:
    """Where a source's rows come from, for messages: a file path, a hub id@revision, or the bundled sample."""
    adapter = REGISTRY[cfg.name]
    if cfg.path is None:
        return str(SAMPLES / f"{cfg.name}.jsonl")
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

    adapter = REGISTRY[cfg.name]
    datasets.disable_progress_bars()
    if cfg.path is None or is_local_path(cfg.path):
        path = Path(cfg.path).expanduser() if cfg.path else SAMPLES / f"{cfg.name}.jsonl"
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
    adapter = REGISTRY[cfg.name]
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

