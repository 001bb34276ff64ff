"""The mixture and contamination sections, as plain rows and lines, from each run's prepare manifest."""

from __future__ import annotations

from dataclasses import dataclass

from rutune.report.collect import Run, mixture_sources
from rutune.report.labels import short_name

MAX_IDS = 10


@dataclass
class MixtureRow:
    kind: str
    source: str
    short: str
    requested: str
    available: int | None
    realised: int | None
    rows_read: int | None
    after_filters: int | None
    held_out: int | None
    dropped: dict[str, int]

    @property
    def realised_percent(self) -> float | None:
        """Realised rows as a percent of the rows available after filters and holdout (compare with `requested`)."""
        if not self.available or self.realised is None:
            return None
        return 100.0 * self.realised / self.available


def mixture_rows(run: Run) -> list[MixtureRow]:
    rows = []
    for kind in ("sft", "preference"):
        for s in mixture_sources(run, kind):
            available = s.get("available")
            if available is None and s.get("after_filters") is not None:
                available = s["after_filters"] - (s.get("held_out") or 0)
            rows.append(MixtureRow(kind, s["source"], short_name(s), str(s.get("requested", "")),
                                   available, s.get("realised"), s.get("rows_read"), s.get("after_filters"),
                                   s.get("held_out"), dict(s.get("dropped") or {})))
    return rows


def contamination_lines(run: Run) -> list[str]:
    """One line per eval set: the summary the prepare stage wrote, plus the first flagged item ids."""
    summary = (run.prepare or {}).get("contamination") or {}
    sets = (run.contamination or {}).get("sets") or {}
    lines = []
    for name in sorted(set(summary) | set(sets)):
        detail = sets.get(name) or {}
        text = summary.get(name)
        if text is None and "items" in detail:
            text = f"{detail.get('contaminated', 0)}/{detail['items']} items share an n-gram"
        ids = [str(i) for i in detail.get("ids") or []]
        if ids:
            more = f" (+{len(ids) - MAX_IDS} more)" if len(ids) > MAX_IDS else ""
            text += f"; flagged ids: {', '.join(ids[:MAX_IDS])}{more}"
        lines.append(f"{name}: {text}")
    return lines
