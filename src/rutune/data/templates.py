"""Chat-template rendering, assistant-only label masks for any template, and preference-pair tokenization.

Renders with the tokenizer's own Jinja template and trains only on assistant turns: each turn's content plus
the template's end-of-turn text (`<|im_end|>` for ChatML), never the whitespace the template writes after it,
never a duplicated end-of-turn token, and no `{% generation %}` markers needed (how spans are found:
`rutune.data.chat_spans`). Many chats are tokenized with one batched tokenizer call.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rutune.data.chat_spans import (
    IGNORE_INDEX,
    ChatRenderer,
    TemplateError,
    assistant_spans,
    check_messages,
    encode_batch,
    labels_by_pieces,
    labels_for_spans,
    spans_by_search,
    template_text,
    token_range,
    turn_span,
)
from rutune.rundir import stable_hash


@dataclass(frozen=True)
class TokenizedChat:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX (-100) = not trained


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


# ---------------------------------------------------------------- loading and hashing

def load_tokenizer(path: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """Load a tokenizer and insist on a chat template (TemplateError names the folder and the fix)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TemplateError(f"tokenizer {path}: cannot be loaded ({first})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            f"tokenizer {path}: has no chat template; add a chat_template.jinja file to that folder "
            "(or a `chat_template` entry in its tokenizer_config.json)"
        )
    return tokenizer


def template_hash(tokenizer) -> str:
    """Hash of vocabulary size, special tokens and chat template: a cache key for tokenized data."""
    added = sorted((int(i), t.content) for i, t in tokenizer.added_tokens_decoder.items())
    return stable_hash({
        "vocab_size": len(tokenizer),
        "special_tokens": tokenizer.special_tokens_map,
        "added_tokens": added,
        "chat_template": template_text(tokenizer),
    })


def render(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
    """The chat as the tokenizer's own template writes it (what `apply_chat_template(tokenize=False)` returns)."""
    return ChatRenderer(tokenizer)(check_messages(messages), add_generation_prompt)


# ---------------------------------------------------------------- SFT rows

def _count(counts: MutableMapping[str, int] | None, key: str) -> None:
    if counts is not None:
        counts[key] = counts.get(key, 0) + 1


def tokenize_chats(tokenizer, conversations: Sequence[Sequence[dict]], *, max_tokens: int | None = None,
                   overlength: Literal["drop", "truncate"] = "drop",
                   counts: MutableMapping[str, int] | None = None) -> list[TokenizedChat | None]:
    """Tokenize many chats with one batched tokenizer call; labels train assistant turns only.

    A chat is a list of {role, content} dicts (or `records.Message`s, or a `records.Conversation`).
    Rows longer than `max_tokens` are dropped (None) or, with overlength="truncate", cut to their first
    `max_tokens` tokens; a cut that leaves no trained token drops the row too. `counts` (optional) gets
    `kept`, `truncated`, `dropped_overlength`.
    """
    if overlength not in ("drop", "truncate"):
        raise TemplateError(f"overlength: {overlength!r} is not one of drop, truncate")
    renderer = ChatRenderer(tokenizer)
    texts, all_spans = [], []
    for i, messages in enumerate(conversations):
        msgs = check_messages(getattr(messages, "messages", messages), what=f"conversation {i} messages")
        if not any(m["role"] == "assistant" for m in msgs):
            raise TemplateError(f"conversation {i}: has no assistant message, nothing to train on")
        full = renderer(msgs)
        texts.append(full)
        all_spans.append(assistant_spans(renderer, msgs, full))
    if getattr(tokenizer, "is_fast", False):
        ids_batch, encodings = encode_batch(tokenizer, texts) if texts else ([], [])
        rows = [(ids, labels_for_spans(ids, enc, text, spans))
                for ids, enc, text, spans in zip(ids_batch, encodings, texts, all_spans)]
    else:
        rows = [labels_by_pieces(tokenizer, text, spans) for text, spans in zip(texts, all_spans)]
    out: list[TokenizedChat | None] = []
    for ids, labels in rows:
        if max_tokens is not None and len(ids) > max_tokens:
            if overlength == "drop" or all(x == IGNORE_INDEX for x in labels[:max_tokens]):
                _count(counts, "dropped_overlength")
                out.append(None)
                continue
            ids, labels = ids[:max_tokens], labels[:max_tokens]
            _count(counts, "truncated")
        _count(counts, "kept")
        out.append(TokenizedChat(input_ids=ids, labels=labels))
    return out


def tokenize_chat(tokenizer, messages: Sequence[dict], *, max_tokens: int | None = None,
                  overlength: Literal["drop", "truncate"] = "drop",
                  counts: MutableMapping[str, int] | None = None) -> TokenizedChat | None:
    """One chat → input_ids + labels (assistant content + end-of-turn trained); None when dropped for length."""
    return tokenize_chats(tokenizer, [messages], max_tokens=max_tokens, overlength=overlength, counts=counts)[0]


# ---------------------------------------------------------------- preference pairs

def tokenize_pair(tokenizer, prompt: Sequence[dict], chosen: str, rejected: str, *, max_tokens: int | None = None,
                  overlength: Literal["drop", "truncate_prompt"] = "truncate_prompt",
                  counts: MutableMapping[str, int] | None = None) -> TokenizedPair | None:
    """Prompt (with the generation header) and the two replies (content + end-of-turn) as token ids.

    `prompt_ids + chosen_ids` is a prefix of the tokenized `render(prompt + [assistant chosen])` whenever the
    tokenizer does not merge tokens across the prompt/reply boundary (ChatML replies that do not start with
    whitespace); when it does, the reply span is tokenized on its own, so the texts still match exactly.
    Over `max_tokens` (prompt + longer reply): "drop" → None; "truncate_prompt" → see `_truncate_prompt`.
    """
    if overlength not in ("drop", "truncate_prompt"):
        raise TemplateError(f"overlength: {overlength!r} is not one of drop, truncate_prompt")
    renderer = ChatRenderer(tokenizer)
    msgs = check_messages(prompt, what="prompt")
    if msgs[-1]["role"] == "assistant":
        raise TemplateError("prompt: ends with an assistant message; a prompt ends with the user's turn")
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(reply, str):
            raise TemplateError(f"{name}: must be text, got {type(reply).__name__}")
    prompt_text = renderer(msgs, True)
    fulls, spans = [], []
    for reply in (chosen, rejected):
        full_msgs = msgs + [{"role": "assistant", "content": reply}]
        full = renderer(full_msgs)
        span = turn_span(renderer, full, len(prompt_text), reply, lambda: full) \
            if full.startswith(prompt_text) else None
        fulls.append(full)
        spans.append(span or spans_by_search(renderer, full_msgs, full)[-1])
    ids_batch, encodings = encode_batch(tokenizer, [prompt_text, *fulls])
    prompt_ids = list(ids_batch[0])
    replies: list[list[int]] = []
    for ids, enc, full, (s, e) in zip(ids_batch[1:], (encodings or [None] * 3)[1:], fulls, spans):
        if enc is not None and full.startswith(prompt_text) and s == len(prompt_text):
            first, stop = token_range(enc, len(ids), len(full), s, e)
            if ids[:first] == prompt_ids and (first == len(ids) or enc.token_to_chars(first)[0] >= s):
                replies.append(list(ids[first:stop]))
                continue
        replies.append(list(tokenizer(full[s:e], add_special_tokens=False)["input_ids"]))
    longest = max(len(r) for r in replies)
    if max_tokens is not None and len(prompt_ids) + longest > max_tokens:
        if overlength == "drop":
            _count(counts, "dropped_overlength")
            return None
        cut = _truncate_prompt(tokenizer, renderer, msgs, prompt_text, prompt_ids, max_tokens - longest)
        if cut is None:
            _count(counts, "dropped_overlength")
            return None
        prompt_ids = cut
        _count(counts, "truncated_prompt")
    _count(counts, "kept")
    return TokenizedPair(prompt_ids=prompt_ids, chosen_ids=replies[0], rejected_ids=replies[1])


def _truncate_prompt(tokenizer, renderer: ChatRenderer, msgs: list[dict], prompt_text: str, prompt_ids: list[int],
                     budget: int) -> list[int] | None:
    """Cut a prompt from the left to `budget` tokens: keep head + the newest tokens + the generation header.

    The head is the system turn as rendered (`render(prompt[:1])`, when the prompt starts with a system message
    and that render is a prefix); it is kept when it fits together with the header, otherwise it is cut like the
    rest. The generation header (e.g. "<|im_start|>assistant\\n") is always kept. Everything between is cut from
    the left at token level. None when even the header does not fit.
    """
    n = len(prompt_ids)
    without_header = renderer(msgs, False)
    header_chars = len(without_header) if prompt_text.startswith(without_header) else len(prompt_text)
    head_chars = 0
    if msgs[0]["role"] == "system" and len(msgs) > 1:
        head = renderer(msgs[:1], False)
        if prompt_text.startswith(head):
            head_chars = len(head)
    # token index where the header starts / the head ends, via a prefix tokenization (robust for slow tokenizers)
    pieces = tokenizer([prompt_text[:header_chars], prompt_text[:head_chars]], add_special_tokens=False)["input_ids"]
    header_at = len(pieces[0]) if prompt_ids[:len(pieces[0])] == pieces[0] else n
    head_len = len(pieces[1]) if head_chars and prompt_ids[:len(pieces[1])] == pieces[1] else 0
    header = prompt_ids[header_at:]
    if budget < len(header):
        return None
    head = prompt_ids[:head_len]
    if budget < len(head) + len(header):
        head = []
    keep = budget - len(head) - len(header)
    middle = prompt_ids[len(head):header_at]
    return head + (middle[len(middle) - keep:] if keep else []) + header


__all__ = [
    "IGNORE_INDEX", "TemplateError", "TokenizedChat", "TokenizedPair", "load_tokenizer", "render", "template_hash", "tokenize_chat", "tokenize_chats", "tokenize_pair",
]
