"""Chat-template rendering and assistant-only label masks for any template.

Renders with the tokenizer's own Jinja template and trains only on assistant turns: each turn's content
plus the template's end-of-turn text (`<|im_end|>` for ChatML), never the whitespace a template writes
after it, and never a duplicated end-of-turn token. No `{% generation %}` markers are needed.

How spans are found (character offsets in the full render, then tokens):
1. Prefix diff. For assistant turn k, `render(messages[:k], add_generation_prompt=True)` must be a prefix of
   the full render; the turn starts where it ends. The turn ends after the template's end-of-turn text
   (learned once per template from a probe conversation: what follows a reply, minus trailing whitespace):
   right after the verbatim content when it is there, else at the next occurrence of the end-of-turn text
   (templates that trim or rewrite content). A template with no end-of-turn text ends the turn where
   `render(messages[:k+1])` ends, minus trailing whitespace.
2. Search fallback, when a prefix is not a prefix of the full render (templates that re-render earlier turns
   differently once later turns exist): every message's content is located in order in the full render and
   each assistant span is extended by the end-of-turn text when it follows.
The full render is tokenized once (one batched call for many chats); a token is trained when it overlaps an
assistant span — the rule transformers uses for `{% generation %}` masks, so a token merged across a
boundary is trained, as TRL would train it.
"""

from __future__ import annotations

import bisect
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rutune.records import ROLES
from rutune.rundir import stable_hash

IGNORE_INDEX = -100
_PROBE_USER = "rutune probe question"
_PROBE_REPLY = "rutune probe reply 7f3a"


class TemplateError(ValueError):
    """A tokenizer without a usable chat template, or messages a template cannot take; one line, with the fix."""


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
        "chat_template": _chat_template(tokenizer),
    })


# ---------------------------------------------------------------- rendering

def _chat_template(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one renders chats
        template = template.get("default")
    if not template:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TemplateError(
            f"tokenizer {name}: has no chat template; add a chat_template.jinja file to its folder "
            "(or a `chat_template` entry in its tokenizer_config.json)"
        )
    return template


class _Renderer:
    """The tokenizer's compiled template plus the variables `apply_chat_template` passes (special tokens)."""

    def __init__(self, tokenizer):
        from transformers.utils.chat_template_utils import _compile_jinja_template

        self.template = _chat_template(tokenizer)
        self.compiled = _compile_jinja_template(self.template)
        self.variables = dict(tokenizer.special_tokens_map)
        self.key = (self.template, tuple(sorted((k, str(v)) for k, v in self.variables.items())))

    def __call__(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self.compiled.render(messages=list(messages), tools=None, documents=None,
                                        add_generation_prompt=add_generation_prompt, **self.variables)
        except Exception as exc:  # a template's raise_exception() or a Jinja error: one line, no traceback
            raise TemplateError(f"chat template cannot render these messages: {exc}") from None


def _checked(messages: Sequence[Any], *, what: str = "messages") -> list[dict[str, str]]:
    """Messages as plain dicts; TemplateError for an empty list, an unknown role or non-text content."""
    if not messages:
        raise TemplateError(f"{what}: empty (a chat needs at least one message)")
    out = []
    for i, m in enumerate(messages):
        if hasattr(m, "to_dict"):
            m = m.to_dict()
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TemplateError(f"{what}[{i}]: expected a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise TemplateError(f"{what}[{i}]: role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise TemplateError(f"{what}[{i}]: content must be text, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def render(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
    """The chat as the tokenizer's own template writes it (what `apply_chat_template(tokenize=False)` returns)."""
    return _Renderer(tokenizer)(_checked(messages), add_generation_prompt)


_END_OF_TURN: dict[tuple, str] = {}


def end_of_turn(renderer: _Renderer) -> str:
    """What the template writes right after an assistant's content, minus trailing whitespace (cached)."""
    if renderer.key not in _END_OF_TURN:
        _END_OF_TURN[renderer.key] = _probe_end_of_turn(renderer)
    return _END_OF_TURN[renderer.key]


def _probe_end_of_turn(renderer: _Renderer) -> str:
    probe = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
    text = renderer(probe)
    at = text.rfind(_PROBE_REPLY)
    if at < 0:
        raise TemplateError("chat template drops the assistant's content; cannot locate assistant turns")
    return text[at + len(_PROBE_REPLY):].rstrip()


# ---------------------------------------------------------------- assistant spans (characters)

def assistant_spans(renderer: _Renderer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """[start, end) character spans of each assistant turn's content + end-of-turn text in `full`."""
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    spans: list[tuple[int, int]] = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        try:
            prefix = renderer(messages[:k], True) if k else None
        except TemplateError:
            prefix = None
        span = None
        if prefix is not None and full.startswith(prefix):
            upto = (lambda: full) if k == last else (lambda: renderer(messages[:k + 1]))
            span = _turn_span(renderer, full, len(prefix), m["content"], upto)
        if span is None:
            return _spans_by_search(renderer, messages, full)
        spans.append(span)
    return spans


def _turn_span(renderer: _Renderer, full: str, start: int, content: str, upto) -> tuple[int, int] | None:
    """End of the assistant turn starting at `start` (see the module doc); None when it cannot be placed."""
    eot = end_of_turn(renderer)
    if full.startswith(content, start) and full.startswith(eot, start + len(content)):
        return start, start + len(content) + len(eot)
    if eot:  # content rewritten by the template (trimmed, reformatted): up to the next end-of-turn text
        at = full.find(eot, start)
        return (start, at + len(eot)) if at >= 0 else None
    text = upto()
    if not full.startswith(text) or len(text) < start:
        return None
    return start, max(start, len(text.rstrip()))


def _spans_by_search(renderer: _Renderer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """Locate messages' contents in order; assistant spans get the end-of-turn text when it follows.

    A system/user content moves the cursor only when it is found before the next assistant content, so a
    template that moves a message (e.g. the system prompt into the last user turn) does not derail the search,
    and a user turn that quotes the reply does not capture it.
    """
    eot = end_of_turn(renderer)
    spans, cursor = [], 0
    for k, m in enumerate(messages):
        content = m["content"].strip()
        at = full.find(content, cursor) if content else -1
        if m["role"] != "assistant":
            following = next((n["content"].strip() for n in messages[k + 1:] if n["role"] == "assistant"), None)
            limit = full.find(following, cursor) if following else -1
            if at >= 0 and (limit < 0 or at < limit):
                cursor = at + len(content)
            continue
        if at < 0:
            raise TemplateError(f"messages[{k}]: assistant content not found in the rendered chat")
        end = at + len(content)
        if eot and full.startswith(eot, end):
            end += len(eot)
        spans.append((at, end))
        cursor = end
    return spans


# ---------------------------------------------------------------- spans → tokens

def _encode_batch(tokenizer, texts: list[str]):
    """One batched tokenizer call; returns (ids per text, encodings or None for slow tokenizers)."""
    batch = tokenizer(texts, add_special_tokens=False)
    encodings = batch.encodings if getattr(tokenizer, "is_fast", False) else None
    return batch["input_ids"], encodings


def _token_range(encoding, n_tokens: int, n_chars: int, start: int, end: int) -> tuple[int, int]:
    """[first, stop) of the tokens overlapping chars [start, end) — transformers' rule for generation masks
    (a token is in when token_end > start and token_start < end) — found near the boundaries only."""
    first = next((t for c in range(start, end) if (t := encoding.char_to_token(c)) is not None), None)
    if first is None:
        return 0, 0
    while first > 0 and encoding.token_to_chars(first - 1)[1] > start:
        first -= 1
    stop = next((t for c in range(end, n_chars) if (t := encoding.char_to_token(c)) is not None), n_tokens)
    while stop < n_tokens and encoding.token_to_chars(stop)[0] < end:
        stop += 1
    return first, max(first, stop)


def _labels_slow(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Slow (Python) tokenizers have no offsets: tokenize text piece by piece at span boundaries."""
    ids: list[int] = []
    labels: list[int] = []
    cursor = 0
    for s, e in spans + [(len(text), len(text))]:
        for piece, trained in ((text[cursor:s], False), (text[s:e], True)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                labels += piece_ids if trained else [IGNORE_INDEX] * len(piece_ids)
        cursor = e
    return ids, labels


def _labels(ids: list[int], encoding, text: str, spans: list[tuple[int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    for s, e in spans:
        first, stop = _token_range(encoding, len(ids), len(text), s, e)
        labels[first:stop] = ids[first:stop]
    return labels


# ---------------------------------------------------------------- SFT rows

def _count(counts: MutableMapping[str, int] | None, key: str) -> None:
    if counts is not None:
        counts[key] = counts.get(key, 0) + 1


def tokenize_chats(tokenizer, conversations: Sequence[Sequence[dict]], *, max_tokens: int | None = None,
                   overlength: Literal["drop", "truncate"] = "drop",
                   counts: MutableMapping[str, int] | None = None) -> list[TokenizedChat | None]:
    """Tokenize many chats with one batched tokenizer call; labels train assistant turns only.

    Rows longer than `max_tokens` are dropped (None) or, with overlength="truncate", cut to their first
    `max_tokens` tokens; a cut that leaves no trained token drops the row too. `counts` (optional) gets
    `kept`, `truncated`, `dropped_overlength`.
    """
    if overlength not in ("drop", "truncate"):
        raise TemplateError(f"overlength: {overlength!r} is not one of drop, truncate")
    renderer = _Renderer(tokenizer)
    texts, all_spans = [], []
    for i, messages in enumerate(conversations):
        msgs = _checked(messages, what=f"conversation {i} messages")
        if not any(m["role"] == "assistant" for m in msgs):
            raise TemplateError(f"conversation {i}: has no assistant message, nothing to train on")
        full = renderer(msgs)
        texts.append(full)
        all_spans.append(assistant_spans(renderer, msgs, full))
    if getattr(tokenizer, "is_fast", False):
        ids_batch, encodings = _encode_batch(tokenizer, texts) if texts else ([], [])
        rows = [(ids, _labels(ids, enc, text, spans))
                for ids, enc, text, spans in zip(ids_batch, encodings, texts, all_spans)]
    else:
        rows = [_labels_slow(tokenizer, text, spans) for text, spans in zip(texts, all_spans)]
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
        out.append(TokenizedChat(input_ids=list(ids), labels=labels))
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
    renderer = _Renderer(tokenizer)
    msgs = _checked(prompt, what="prompt")
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
        span = _turn_span(renderer, full, len(prompt_text), reply, lambda: full) \
            if full.startswith(prompt_text) else None
        fulls.append(full)
        spans.append(span or _spans_by_search(renderer, full_msgs, full)[-1])
    ids_batch, encodings = _encode_batch(tokenizer, [prompt_text, *fulls])
    prompt_ids = list(ids_batch[0])
    replies: list[list[int]] = []
    for ids, enc, full, (s, e) in zip(ids_batch[1:], (encodings or [None] * 3)[1:], fulls, spans):
        if enc is not None and full.startswith(prompt_text) and s == len(prompt_text):
            first, stop = _token_range(enc, len(ids), len(full), s, e)
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


def _truncate_prompt(tokenizer, renderer: _Renderer, msgs: list[dict], prompt_text: str, prompt_ids: list[int],
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
    "IGNORE_INDEX", "TemplateError", "TokenizedChat", "TokenizedPair", "assistant_spans", "end_of_turn",
    "load_tokenizer", "render", "template_hash", "tokenize_chat", "tokenize_chats", "tokenize_pair",
]
