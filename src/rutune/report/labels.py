"""Row labels: `base` once, a readable mixture label per trained model, `experiment/model` otherwise.

Rule (docs/report.md):

- the baseline model (`baseline_label`, default `base`) is one row labelled with that name, shared by all runs;
- a trained stage gets the mixture it saw, earliest stage first, following `init_from` back to the base: each
  stage contributes the sources of the data block its train manifest names (`data_block`: `sft`, `preference`),
  each written as `<short name> <requested>` ("+ GM 60% + Saiga 20%"), the short names the prepare manifest
  recorded from the source registry (GM, Saiga, RAG, Saiga Pref);
- a model with no train manifest (an outside checkpoint) or a run with no prepare manifest is `experiment/model`;
- when two rows would read the same, every row sharing that label falls back to `experiment/model`.
"""

from __future__ import annotations

from typing import Iterable

from rutune.report.collect import Run, mixture_sources

def short_name(report: dict) -> str:
    """A source's short label from its prepare-manifest report (the source's own name when none was recorded)."""
    return str(report.get("short") or report["source"])


def short_names(runs: list[Run]) -> dict[str, str]:
    return {s["source"]: short_name(s) for r in runs for kind in ("sft", "preference") for s in mixture_sources(r, kind)}


def requested_text(requested: str) -> str:
    return f"{requested[len('count '):]} rows" if requested.startswith("count ") else requested


def stage_chain(run: Run, model: str) -> list[str] | None:
    chain, name = [], model
    while name and name != "base":
        stage = run.stages.get(name)
        if stage is None or not stage.data_block or name in chain:
            return None
        chain.append(name)
        name = stage.init_from
    return list(reversed(chain))


def mixture_label(run: Run, model: str) -> str | None:
    """"+ GM 100% + Saiga 60%" for a trained stage of `run`, or None when the files cannot say."""
    if run.prepare is None:
        return None
    chain = stage_chain(run, model)
    if not chain:
        return None
    parts = []
    for stage_name in chain:
        sources = mixture_sources(run, run.stages[stage_name].data_block)
        if not sources:
            return None
        parts += [f"{short_name(s)} {requested_text(str(s['requested']))}" for s in sources]
    return "+ " + " + ".join(parts)


def assign_labels(keys: Iterable[tuple[Run, str]], baseline_label: str) -> dict[tuple[str, str], str]:
    """Display label for each (run, model) pair, keyed by (experiment, model)."""
    proposed: dict[tuple[str, str], str] = {}
    for run, model in keys:
        key = (run.experiment, model)
        if model == baseline_label:
            proposed[key] = baseline_label
        else:
            proposed[key] = mixture_label(run, model) or f"{run.experiment}/{model}"
    counts: dict[str, int] = {}
    for label in proposed.values():
        counts[label] = counts.get(label, 0) + 1
    return {key: (label if counts[label] == 1 or key[1] == baseline_label else f"{key[0]}/{key[1]}")
            for key, label in proposed.items()}


def source_percents(run: Run) -> dict[str, float]:
    """`source → percent` of a run's mixture (count-based sources are left out)."""
    out = {}
    for kind in ("sft", "preference"):
        for s in mixture_sources(run, kind):
            requested = str(s.get("requested", ""))
            if requested.endswith("%"):
                try:
                    out[s["source"]] = float(requested[:-1])
                except ValueError:
                    continue
    return out
