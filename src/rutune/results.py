"""The `display` block a suite puts on each metric of results.json that the report should show as a column.

The report knows no suite by name: it builds its columns, their order, titles, decimals, the ▲/▼ marks and the
legend from these blocks alone (docs/results-format.md). A metric without `display` is kept in results.json but
not shown in the comparison table.

Fields: `title` (column header), `decimals`, `direction` (`higher` / `lower` is better, `none`), `test` — the
paired test against the baseline: `mcnemar` (0/1 items), `paired_bootstrap` (mean difference of per-item values),
`none` (no item-level test, e.g. a refitted model score) — `order` (column position, smaller first), and for the
tests where the per-item values come from: `items_file` (beside results.json), `item_key` (the row field),
`where` (row fields that must match, e.g. `{"task": "qa1"}`); `unit_title` (shown after the title, or per
cell when models differ); `histogram` (the report draws the per-item values per model). A row's id is its `id` field; rows whose value is
null or whose `valid` is false are left out.
"""

from __future__ import annotations

from typing import Any

TESTS = ("mcnemar", "paired_bootstrap", "none")
DIRECTIONS = ("higher", "lower", "none")


def display(title: str, *, decimals: int = 3, direction: str = "higher", test: str = "none", order: float = 100,
            item_key: str | None = None, items_file: str = "items.jsonl", where: dict[str, Any] | None = None,
            unit_title: str | None = None, histogram: bool = False) -> dict[str, Any]:
    """A validated `display` block (an unknown test or direction is a programming error, raised at once)."""
    if test not in TESTS:
        raise ValueError(f"display test {test!r}: expected one of {', '.join(TESTS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"display direction {direction!r}: expected one of {', '.join(DIRECTIONS)}")
    if test != "none" and not item_key:
        raise ValueError(f"display {title!r}: a {test} test needs item_key")
    out: dict[str, Any] = {"title": title, "decimals": decimals, "direction": direction, "test": test,
                           "order": order, "items_file": items_file, "item_key": item_key}
    if where:
        out["where"] = dict(where)
    if unit_title:
        out["unit_title"] = unit_title
    if histogram:
        out["histogram"] = True
    return out


def annotate(results: dict, shown: dict[str, dict[str, Any]]) -> dict:
    """Attach display blocks to the named metrics that exist in `results` (in place; returns it)."""
    for name, block in shown.items():
        entry = results.get("metrics", {}).get(name)
        if isinstance(entry, dict):
            entry["display"] = block
    return results
