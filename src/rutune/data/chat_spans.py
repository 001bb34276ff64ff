"""Where each assistant turn sits in a rendered chat, for any Jinja chat template (used by `templates`).

Spans are [start, end) character ranges of an assistant turn's content plus the template's end-of-turn text
(`<|im_end|>` for ChatML), never the whitespace after it. Three ways to find them, fastest first:
1. Header path (no extra renders). When probe chats show that this template renders every assistant turn as
   generation-prompt header + verbatim content + end-of-turn, and that the spans found that way equal the
   prefix-diff spans, the i-th header occurrence in the full render starts the i-th assistant turn. A chat
   whose messages quote the header or end-of-turn text, or whose turns do not match, takes path 2.
2. Prefix diff. Turn k starts where `render(messages[:k], add_generation_prompt=True)` ends (it must be a
   prefix of the full render); it ends after the end-of-turn text — right after the verbatim content when it
   is there, else at the next end-of-turn text (templates that trim or rewrite content). A template with no
   end-of-turn text ends the turn where `render(messages[:k+1])` ends, minus trailing whitespace.
3. Search, when a prefix is not a prefix of the full render (templates that re-render earlier turns once later
   turns exist, e.g. the system prompt moved into the last user turn): contents are located in order.
Tokens are then picked by overlap (token_end > start and token_start < end), the rule transformers applies to
`{% generation %}` spans, so a token merged across a boundary is trained exactly as TRL would train it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rutune.records import ROLES

IGNORE_INDEX = -100
_PROBE_USER = "rutune probe question"
_PROBE_REPLY = "rutune probe reply 7f3a"


class TemplateError(ValueError):
    """A tokenizer without a usable chat template, or messages a template cannot take; one line, with the fix."""


def template_text(tokenizer) -> str:
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


class ChatRenderer:
    """The tokenizer's compiled template plus the variables `apply_chat_template` passes (special tokens)."""

    def __init__(self, tokenizer):
        from transformers.utils.chat_template_utils import _compile_jinja_template

        self.template = template_text(tokenizer)
        self.compiled = _compile_jinja_template(self.template)
        self.variables = dict(tokenizer.special_tokens_map)
        self.key = (self.template, tuple(sorted((k, str(v)) for k, v in self.variables.items())))

    def __call__(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self.compiled.render(messages=list(messages), tools=None, documents=None,
                                        add_generation_prompt=add_generation_prompt, **self.variables)
        except Exception as exc:  # a template's raise_exception() or a Jinja error: one line, no traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TemplateError(f"chat template cannot render these messages: {first}") from None


def check_messages(messages: Sequence[Any], *, what: str = "messages") -> list[dict[str, str]]:
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


@dataclass(frozen=True)
class _TemplateFacts:
    """Learned once per template from probe chats.

    end_of_turn: what the template writes right after an assistant's content, minus trailing whitespace.
    header: the generation prompt (e.g. "<|im_start|>assistant\\n") when the fast path is valid for this template:
    every assistant turn renders as header + content + end_of_turn, and on the probes the spans found that way
    equal the prefix-diff spans; None otherwise.
    """

    end_of_turn: str
    header: str | None


_FACTS: dict[tuple, _TemplateFacts] = {}


def _facts(renderer: ChatRenderer) -> _TemplateFacts:
    if renderer.key not in _FACTS:
        _FACTS[renderer.key] = _probe_facts(renderer)
    return _FACTS[renderer.key]


def end_of_turn(renderer: ChatRenderer) -> str:
    """What the template writes right after an assistant's content, minus trailing whitespace (cached)."""
    return _facts(renderer).end_of_turn


def _probe_facts(renderer: ChatRenderer) -> _TemplateFacts:
    probe = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
    text = renderer(probe)
    at = text.rfind(_PROBE_REPLY)
    if at < 0:
        raise TemplateError("chat template drops the assistant's content; cannot locate assistant turns")
    facts = _TemplateFacts(end_of_turn=text[at + len(_PROBE_REPLY):].rstrip(), header=None)
    _FACTS[renderer.key] = facts  # the prefix-diff path below needs end_of_turn
    bare = renderer(probe[:1])
    prompted = renderer(probe[:1], True)
    header = prompted[len(bare):] if prompted.startswith(bare) else ""
    if not header.strip() or not facts.end_of_turn:
        return facts
    candidate = _TemplateFacts(facts.end_of_turn, header)
    chats = [[{"role": "user", "content": f"{_PROBE_USER} {i}"}, {"role": "assistant", "content": f"{_PROBE_REPLY} {i}"}]
             for i in range(3)]
    for chat in ([{"role": "system", "content": "probe system"}] + chats[0] + chats[1] + chats[2],
                 chats[0] + chats[1]):
        try:
            full = renderer(chat)
            if _header_spans(candidate, chat, full) != _prefix_spans(renderer, chat, full):
                return facts
        except TemplateError:
            continue
    return candidate


# ---------------------------------------------------------------- assistant spans (characters)

def assistant_spans(renderer: ChatRenderer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """[start, end) character spans of each assistant turn's content + end-of-turn text in `full`."""
    facts = _facts(renderer)
    if facts.header is not None and (spans := _header_spans(facts, messages, full)) is not None:
        return spans
    return _prefix_spans(renderer, messages, full) or spans_by_search(renderer, messages, full)


def _header_spans(facts: _TemplateFacts, messages: list[dict], full: str) -> list[tuple[int, int]] | None:
    """Fast path, no extra renders: the i-th header occurrence starts the i-th assistant turn.

    Valid only when no message quotes the header or the end-of-turn text, the header occurs once per assistant
    turn, and each turn is header + verbatim content + end-of-turn; else None (the caller takes the exact path).
    """
    header, eot = facts.header, facts.end_of_turn
    replies = []
    for m in messages:
        if header in m["content"] or eot in m["content"]:
            return None
        if m["role"] == "assistant":
            replies.append(m["content"])
    if full.count(header) != len(replies):
        return None
    spans, cursor = [], 0
    for content in replies:
        start = full.index(header, cursor) + len(header)
        end = start + len(content)
        if not (full.startswith(content, start) and full.startswith(eot, end)):
            return None
        spans.append((start, end + len(eot)))
        cursor = end
    return spans


def _prefix_spans(renderer: ChatRenderer, messages: list[dict], full: str) -> list[tuple[int, int]] | None:
    """Exact path: turn k starts where `render(messages[:k], add_generation_prompt=True)` ends (None if not a prefix)."""
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    spans: list[tuple[int, int]] = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        try:
            prefix = renderer(messages[:k], True) if k else None
        except TemplateError:
            prefix = None
        if prefix is None or not full.startswith(prefix):
            return None
        upto = (lambda: full) if k == last else (lambda: renderer(messages[:k + 1]))
        span = turn_span(renderer, full, len(prefix), m["content"], upto)
        if span is None:
            return None
        spans.append(span)
    return spans


def turn_span(renderer: ChatRenderer, full: str, start: int, content: str, upto) -> tuple[int, int] | None:
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


def spans_by_search(renderer: ChatRenderer, messages: list[dict], full: str) -> list[tuple[int, int]]:
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

def encode_batch(tokenizer, texts: list[str]):
    """One batched tokenizer call; returns (ids per text, encodings or None for slow tokenizers)."""
    batch = tokenizer(texts, add_special_tokens=False)
    encodings = batch.encodings if getattr(tokenizer, "is_fast", False) else None
    return batch["input_ids"], encodings


def token_range(encoding, n_tokens: int, n_chars: int, start: int, end: int) -> tuple[int, int]:
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


def labels_by_pieces(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
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


def labels_for_spans(ids: list[int], encoding, text: str, spans: list[tuple[int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    for s, e in spans:
        first, stop = token_range(encoding, len(ids), len(text), s, e)
        labels[first:stop] = ids[first:stop]
    return labels
