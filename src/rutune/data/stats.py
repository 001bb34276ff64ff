"""`rutune data stats`: what a prepared file holds — rows per source, token lengths, Russian share, histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rutune.data.filters import record_text, russian_share
from rutune.data.sources import DataError
from rutune.records import Conversation, PreferencePair

PERCENTILES = (50, 90, 99, 100)


def _rows(path: Path):
    import datasets

    datasets.disable_progress_bars()
    if path.is_dir():
        path = path / "sft.parquet"
    if not path.is_file():
        raise DataError(f"{path}: prepared file not found (run `rutune prepare CONFIG` first)")
    ds = datasets.Dataset.from_parquet(str(path))
    if "messages" in ds.column_names:
        return path, [Conversation.from_row(r) for r in ds]
    if "prompt" in ds.column_names:
        return path, [PreferencePair.from_row(r) for r in ds]
    raise DataError(f"{path}: not a prepared file (no `messages` or `prompt` column)")


def compute_stats(records, tokenizer) -> dict:
    """Per-source rows, token-length percentiles of the rendered chat, and mean Russian share."""
    from rutune.data.templates import render

    by_source: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        messages = [m.to_dict() for m in (rec.messages if isinstance(rec, Conversation) else
                                          rec.chosen_conversation().messages)]
        n_tokens = len(tokenizer(render(tokenizer, messages), add_special_tokens=False)["input_ids"])
        by_source.setdefault(rec.source, []).append((n_tokens, russian_share(record_text(rec))))
    out = {}
    for source, vals in sorted(by_source.items()):
        lengths = np.array([v[0] for v in vals])
        out[source] = {
            "rows": len(vals),
            "tokens": {f"p{p}": int(np.percentile(lengths, p)) for p in PERCENTILES},
            "tokens_total": int(lengths.sum()),
            "russian_share": round(float(np.mean([v[1] for v in vals])), 3),
            "lengths": lengths.tolist(),
        }
    return out


def write_histogram(stats: dict, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for source, s in stats.items():
        ax.hist(s["lengths"], bins=30, alpha=0.55, label=f"{source} ({s['rows']})")
    ax.set_xlabel("tokens per rendered conversation")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def print_stats(path: Path, *, tokenizer: str = "tiny", png: Path | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from rutune.data.templates import load_tokenizer
    from rutune.models import resolve_model_path

    path, records = _rows(Path(path))
    tok = load_tokenizer(resolve_model_path(tokenizer))
    stats = compute_stats(records, tok)
    table = Table(title=f"{path}: {len(records)} rows")
    for col in ("source", "rows", *(f"p{p} tokens" for p in PERCENTILES), "Russian share"):
        table.add_column(col)
    for source, s in stats.items():
        table.add_row(source, str(s["rows"]), *(str(s["tokens"][f"p{p}"]) for p in PERCENTILES),
                      f"{s['russian_share']:.2f}")
    console = Console()
    console.print(table)
    png = write_histogram(stats, Path(png) if png else path.with_suffix(".lengths.png"))
    console.print(f"length histogram: {png}")
    return stats
