"""Per-prompt ruIFEval scoring (strict and loose) and the four aggregate scores.

- strict: an instruction is followed when `response.strip() != ""` and its checker passes on the response.
- loose: the checker is tried on eight variants of the response — the response; it with every `*` removed; it
  without its first line; without its last line; without both (lines split on "\\n", re-joined, stripped); and
  each of those three with `*` removed — and the instruction counts as followed if any non-blank variant passes.
  Each instruction picks its own variant. This forgives a preamble ("Конечно! Вот ответ:"), a sign-off, or
  markdown bold around otherwise compliant text.
- `prompt_level_*`: share of prompts whose instructions are all followed; `inst_level_*`: followed instructions
  over all instructions (micro-average, so a 3-instruction prompt weighs three times a 1-instruction one).
Same definitions as IFEval (Google Research), ruIFEval and lm-eval 0.4.13. Confidence intervals are not computed
here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rutune.eval.ifeval.errors import IfevalError
from rutune.eval.ifeval.registry import INSTRUCTIONS, check_kwargs, check_row

SCORE_NAMES = ("prompt_level_strict", "prompt_level_loose", "inst_level_strict", "inst_level_loose")
_ITEM_FIELDS = ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose", "n_instructions")


def loose_variants(response: str) -> tuple[str, ...]:
    """The eight loose-scoring variants of `response`, in IFEval's order."""
    lines = response.split("\n")
    drop_first = "\n".join(lines[1:]).strip()
    drop_last = "\n".join(lines[:-1]).strip()
    drop_both = "\n".join(lines[1:-1]).strip()
    return (response, response.replace("*", ""), drop_first, drop_last, drop_both,
            drop_first.replace("*", ""), drop_last.replace("*", ""), drop_both.replace("*", ""))


def follows_strict(instruction_id: str, kwargs: Mapping, response: str) -> bool:
    """Whether a non-blank `response` follows one instruction as written (kwargs must already be validated)."""
    return bool(response.strip()) and INSTRUCTIONS[instruction_id].checker(response, **kwargs)


def follows_loose(instruction_id: str, kwargs: Mapping, response: str) -> bool:
    """Whether some non-blank loose variant of `response` follows one instruction (kwargs validated)."""
    checker = INSTRUCTIONS[instruction_id].checker
    return any(v.strip() and checker(v, **kwargs) for v in loose_variants(response))


def check_instruction(instruction_id: str, kwargs: Mapping, response: str, *, where: str = "instruction") -> bool:
    """Strict result for one instruction with kwargs validated first (an IfevalError names `where` if they are bad)."""
    return follows_strict(instruction_id, check_kwargs(instruction_id, kwargs, where), response)


def score_response(row: Mapping, response: str, *, where: str | None = None) -> dict:
    """Strict and loose results of one response to one ruIFEval row.

    Returns `id` (str of the row key), `instruction_ids`, `n_instructions`, `inst_strict` / `inst_loose` (0/1 per
    instruction, in row order) and `prompt_strict` / `prompt_loose` (1 when all instructions are followed).
    A malformed row or a non-string response raises an IfevalError naming `where` (default: the row key).
    """
    if where is None:
        where = f"ruIFEval row {row.get('key')!r}" if isinstance(row, Mapping) else "ruIFEval row"
    row = check_row(row, where)
    if not isinstance(response, str):
        raise IfevalError(f"{where} (key {row['key']}): response must be a string, got {type(response).__name__}")
    pairs = list(zip(row["instruction_id_list"], row["kwargs"]))
    strict = [int(follows_strict(iid, kw, response)) for iid, kw in pairs]
    loose = [int(follows_loose(iid, kw, response)) for iid, kw in pairs]
    return {
        "id": str(row["key"]),
        "instruction_ids": list(row["instruction_id_list"]),
        "n_instructions": len(pairs),
        "inst_strict": strict,
        "inst_loose": loose,
        "prompt_strict": int(all(strict)),
        "prompt_loose": int(all(loose)),
    }


def _checked_items(items: Iterable[Mapping]) -> list[Mapping]:
    checked = []
    for index, item in enumerate(items):
        name = f"scored item {index}" + (f" (id {item.get('id')!r})" if isinstance(item, Mapping) else "")
        if not isinstance(item, Mapping) or any(f not in item for f in _ITEM_FIELDS):
            raise IfevalError(f"{name}: not a score_response result (needs {', '.join(_ITEM_FIELDS)})")
        if not len(item["inst_strict"]) == len(item["inst_loose"]) == item["n_instructions"] > 0:
            raise IfevalError(f"{name}: inst_strict/inst_loose lengths do not match n_instructions")
        checked.append(item)
    if not checked:
        raise IfevalError("no scored items to aggregate")
    return checked


def ifeval_scores(items: Iterable[Mapping]) -> dict[str, float]:
    """The four ruIFEval scores (fractions in [0, 1]) over `score_response` results."""
    items = _checked_items(items)
    n_prompts = len(items)
    n_inst = sum(item["n_instructions"] for item in items)
    return {
        "prompt_level_strict": sum(item["prompt_strict"] for item in items) / n_prompts,
        "prompt_level_loose": sum(item["prompt_loose"] for item in items) / n_prompts,
        "inst_level_strict": sum(sum(item["inst_strict"]) for item in items) / n_inst,
        "inst_level_loose": sum(sum(item["inst_loose"]) for item in items) / n_inst,
    }


def instruction_breakdown(items: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """Per instruction id: how many instances (`n`) and the share followed, strict and loose (ids sorted)."""
    totals: dict[str, list[int]] = {}
    for item in _checked_items(items):
        if len(item.get("instruction_ids", ())) != item["n_instructions"]:
            raise IfevalError(f"scored item {item.get('id')!r}: instruction_ids missing or of the wrong length")
        for iid, s, lo in zip(item["instruction_ids"], item["inst_strict"], item["inst_loose"]):
            t = totals.setdefault(iid, [0, 0, 0])
            t[0], t[1], t[2] = t[0] + 1, t[1] + s, t[2] + lo
    return {iid: {"n": n, "strict": s / n, "loose": lo / n} for iid, (n, s, lo) in sorted(totals.items())}
