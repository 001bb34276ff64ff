"""`rutune score …`: score files other tools already wrote — no model, no judge calls.

- `rutune score arena DIR`: an arena-hard-auto / ru_llm_arena folder (`question.jsonl`, `model_answer/`,
  `model_judgment/<judge>/<model>.jsonl`) → rutune's leaderboard: raw, length-controlled and style-controlled win
  rates with CIs, judge-reliability figures and warnings (`rutune.eval.score_import.read_arena_folder`).
- `rutune score libra FILE`: LIBRA's `predictions.json` → per-length, per-task and total scores, raw (LIBRA's
  containment) and normalised (`read_libra_predictions`).

Each writes a Markdown table and the full JSON beside it (atomically) and prints the Markdown. Thin glue: the maths
lives in the eval modules; bad input is one line on stderr and exit code 2 (docs/arena-style.md, "Import").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

score_app = typer.Typer(no_args_is_help=True, help="Score other tools' result files (no model, no judge calls).")
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _run(fn):
    """`fn()`, with bad input (EvalError, OSError, ValueError from the readers) turned into one line, exit 2."""
    from rutune.eval.errors import EvalError

    try:
        return fn()
    except (EvalError, OSError, ValueError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _num(x, decimals: int = 3) -> str:
    return f"{x:.{decimals}f}" if _finite(x) else "—"


def _with_ci(entry: dict | None, decimals: int = 3) -> str:
    if not entry or entry.get("available") is False:
        return "n/a" if entry else "—"
    text = _num(entry.get("value"), decimals)
    if _finite(entry.get("value")) and _finite(entry.get("ci_low")) and _finite(entry.get("ci_high")):
        text += f" [{_num(entry['ci_low'], decimals)}, {_num(entry['ci_high'], decimals)}]"
    return text


def json_ready(obj):
    """`obj` with NaN/inf replaced by None, so the JSON written is standard JSON (no `NaN` tokens)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda t: str(t).replace("|", "\\|")  # noqa: E731
    return (["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows])


def _write(out: Path, markdown: str, data: dict) -> tuple[Path, Path]:
    from rutune.rundir import write_json_atomic, write_text_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    write_text_atomic(out, markdown)
    write_json_atomic(json_path, json_ready(data))
    return out, json_path


# ---------------------------------------------------------------- arena
ARENA_HEADER = ["model", "win rate [95% CI]", "LC (ru)", "LC (AE)", "style-controlled [95% CI]", "swap agr.",
                "P(seat A)", "longer wins", "avg len", "valid/total", "unparsable lines"]


def arena_markdown(res: dict) -> str:
    """The leaderboard (sorted by raw win rate), style coefficients, reliability overall, warnings."""
    rows = []
    for entry in res["leaderboard"]:
        m = res["models"][entry["model"]]
        metrics, rel = m["metrics"], m["reliability"]
        rows.append([entry["model"], _with_ci(metrics["win_rate"]), _num(metrics["win_rate_lc"].get("value")),
                     _num(metrics["win_rate_lc_alpaca"].get("value")), _with_ci(metrics["win_rate_style"]),
                     _num(rel["swap_agreement"]["value"]), _num(rel["first_position"]["win_rate"]),
                     _num(rel["length"]["longer_wins"]), _num(m["avg_length"], 0),
                     f"{metrics['win_rate']['n_valid']}/{metrics['win_rate']['n_total']}",
                     str(m["counts"].get("unparsable_lines", 0))])
    style = res.get("style") or {}
    lines = [f"# Arena leaderboard: {res['source']}", "",
             f"Judge `{res['judge']}`, baseline `{res['baseline']}` (0.5), {res['n_questions']} questions, lengths "
             f"in {res['length_unit']}; {res['settings']['rounds']} bootstrap rounds "
             f"({res['settings']['bootstrap_unit']}), seed {res['settings']['seed']}.", ""]
    lines += _table(ARENA_HEADER, rows) + [""]
    if style.get("coefficients"):
        coefs = ", ".join(f"{f} {_with_ci({'value': c['value'], 'ci_low': c['ci_low'], 'ci_high': c['ci_high']})}"
                          for f, c in style["coefficients"].items() if c)
        lines += [f"- Style control (reference `{style['reference']}`, joint fit of all models): coefficients "
                  f"{coefs}" + ("; outcomes are (nearly) separable, the fit saturated" if style.get("separable")
                                else "") + "."]
    overall = res["reliability"]
    sa = overall["swap_agreement"]
    lines += [f"- Judge reliability, all models: swap agreement {_with_ci(sa)} over {sa['n']} pairs (chance "
              f"{_num(sa['chance'])}, κ {_num(sa['kappa'])}); seat A wins "
              f"{_num(overall['first_position']['win_rate'])} of decisive verdicts; tie rate "
              f"{_num(overall['tie_rate'])}; invalid rate "
              f"{_num(overall['invalid_rate'])}."]
    lines += ["- Games without a judgment line, a missing game or a label outside the five count as invalid "
              "(valid/total)."]
    if res["warnings"]:
        lines += ["", "**⚠ Warnings**", ""] + [f"- ⚠ {w}" for w in res["warnings"]]
    return "\n".join(lines) + "\n"


@score_app.command("arena")
def arena(
    folder: Path = typer.Argument(..., help="arena-hard-auto / ru_llm_arena benchmark folder (e.g. "
                                  "data/arena-hard-v0.1) with question.jsonl, model_answer/, model_judgment/."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Subfolder of model_judgment/ (needed when several)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Baseline model name (default: the judgment "
                                           "rows' `baseline`, else gpt-3.5-turbo-0125 when its answers exist)."),
    out: Path = typer.Option(Path("arena-leaderboard.md"), "--out", help="Markdown file; the JSON goes beside it "
                             "(.json)."),
    rounds: int = typer.Option(100, "--rounds", min=1, help="Bootstrap rounds (the leaderboard's 100)."),
    seed: int = typer.Option(0, "--seed"),
    style_reference: str = typer.Option("mean", "--style-reference", help="mean (arena-hard-auto: the average "
                                        "style difference) or equal (both answers of the same style)."),
    min_swap_agreement: float = typer.Option(0.6, "--min-swap-agreement", min=0.0, max=1.0,
                                             help="Warn when the judge's swap agreement is below this."),
) -> None:
    """Leaderboard of an arena folder from its judgments: raw, LC and style-controlled win rates, reliability."""
    from rutune.eval.score_import import read_arena_folder

    if style_reference not in ("mean", "equal"):
        _fail(f"--style-reference {style_reference}: use mean or equal")
    if not folder.is_dir():
        _fail(f"{folder}: not a folder (expected an arena-hard-auto / ru_llm_arena benchmark folder)")
    res = _run(lambda: read_arena_folder(folder, judge=judge, baseline=baseline, rounds=rounds, seed=seed,
                                         reference=style_reference, min_agreement=min_swap_agreement))
    res["settings"]["min_swap_agreement"] = min_swap_agreement
    markdown = arena_markdown(res)
    md_path, json_path = _run(lambda: _write(out, markdown, res))
    typer.echo(markdown)
    console.print(f"wrote {md_path} and {json_path}", highlight=False)


# ---------------------------------------------------------------- libra
def libra_markdown(res: dict) -> str:
    """One row per task and length (raw and normalised with CIs), then per-task and total rows."""
    m = res["metrics"]
    rows = []
    for task in res["tasks"]:
        for length in res["lengths"][task]:
            cell = res["per_length"].get(task, {}).get(length)
            if cell is None:
                rows.append([task, length, "0 (no prediction)", "0 (no prediction)", "0/0"])
                continue
            raw = {"value": cell["mean"], "ci_low": cell["ci_low"], "ci_high": cell["ci_high"]}
            norm = {"value": cell["mean_norm"], "ci_low": cell["ci_low_norm"], "ci_high": cell["ci_high_norm"]}
            rows.append([task, length, _with_ci(raw), _with_ci(norm), f"{cell['n_valid']}/{cell['n_total']}"])
        rows.append([f"**{task}**", "mean over lengths", _with_ci(m[task]), _with_ci(m[f"{task}_norm"]),
                     f"{m[task]['n_valid']}/{m[task]['n_total']}"])
    rows.append(["**total**", "mean over tasks", _with_ci(m["total"]), _with_ci(m["total_norm"]),
                 f"{m['total']['n_valid']}/{m['total']['n_total']}"])
    lines = [f"# LIBRA scores: {res['source']}", "", f"{res['metric']}; lemmatiser {res['lemmatiser']}.", ""]
    lines += _table(["task", "length", "score [95% CI]", "normalised [95% CI]", "answered/total"], rows) + [""]
    missing = {t: ls for t, ls in res["missing_lengths"].items() if ls}
    lines += [f"- {t}: no scored prediction for {', '.join(ls)} (counted 0 in the task mean)"
              for t, ls in missing.items()]
    lines += [f"- skipped {t}: {why}" for t, why in res["skipped_tasks"].items()]
    return "\n".join(lines).rstrip() + "\n"


@score_app.command("libra")
def libra(
    predictions: Path = typer.Argument(..., help="LIBRA predictions.json ({task: [{length, model_answer, "
                                       "positive_outputs, negative_outputs}]})."),
    out: Path = typer.Option(Path("libra-scores.md"), "--out", help="Markdown file; the JSON goes beside it."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="Comma-separated lengths every task is averaged "
                                          "over (a missing one counts 0); default: the lengths in the file."),
    lemmatise: bool = typer.Option(True, "--lemmatise/--no-lemmatise", help="Lemmatise for the normalised score."),
    rounds: int = typer.Option(1000, "--rounds", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Per-length and total scores (raw and normalised) of a LIBRA predictions.json."""
    from rutune.eval.score_import import read_libra_predictions

    wanted = [x.strip() for x in lengths.split(",") if x.strip()] if lengths else None
    res = _run(lambda: read_libra_predictions(predictions, lengths=wanted, lemmatise=lemmatise, rounds=rounds,
                                              seed=seed))
    markdown = libra_markdown(res)
    md_path, json_path = _run(lambda: _write(out, markdown, res))
    typer.echo(markdown)
    console.print(f"wrote {md_path} and {json_path}", highlight=False)
