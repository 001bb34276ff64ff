"""Grounded-RAG-RU-v2 (Vikhrmodels): dialogues with a `documents` turn, folded into a standard chat."""

from __future__ import annotations

import json
import re
from typing import Literal

from rutune.data.sources._common import Source, SourceBase, messages_of
from rutune.records import Conversation, Message, RecordError, validate_turns

class GroundedRagSource(SourceBase):
    name: Literal["grounded_rag_ru_v2"]
    types: list[Literal["good", "ood"]] | None = None
    documents_to: Literal["system", "user"] = "system"
    keep_relevant_ids_turn: bool = True

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
    raw = messages_of(row.get("conversation"), "conversation")
    folded = fold_rag_conversation(raw, documents_to=cfg.documents_to, keep_relevant_ids_turn=cfg.keep_relevant_ids_turn)
    validate_turns(folded, must_end_with="assistant")
    meta = {"id": row.get("id"), "type": row.get("type"), "cluster": row.get("cluster"), "docs_count": row.get("docs_count")}
    return Conversation(folded, "grounded_rag_ru_v2", meta)


def _rag_drop(row: dict, cfg, seed: int) -> str | None:
    if cfg.types is not None and row.get("type") not in cfg.types:
        return "type"
    return None


SOURCE = Source("grounded_rag_ru_v2", "sft", GroundedRagSource, "Vikhrmodels/Grounded-RAG-RU-v2",
                "91fc52408e80bea2fe42543a980edabfe92821e3", frozenset({"conversation", "type"}), _rag_record, _rag_drop,
                short="RAG", order=30)
