"""The `rutune` command. Thin glue: parse arguments, load config, call a stage, print a one-line error.

Every command turns known failures (config, data, model, judge) into one line on stderr and exit code 2;
a traceback means a bug in rutune.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Adapt instruction LLMs to Russian and measure it.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect prepared data.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a model: mmlu, babilong, arena.")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")

console = Console(stderr=True)


class UserError(Exception):
    """Base for errors caused by input, shown as one line without a traceback."""


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def known_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, not a bug."""
    from rutune.config import ConfigError
    from rutune.models import ModelError
    from rutune.records import RecordError

    errors: list[type[BaseException]] = [ConfigError, ModelError, RecordError, UserError, FileNotFoundError]
    for mod, name in (("rutune.data.sources", "DataError"), ("rutune.eval.errors", "EvalError"),
                      ("rutune.train.errors", "TrainError")):
        try:
            errors.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def guarded(fn):
    """Run `fn`, turning known input errors into one line each."""
    try:
        return fn()
    except known_errors() as e:  # noqa: B030 - the tuple is computed
        from rutune.config import ConfigError

        if isinstance(e, ConfigError):
            for p in e.problems:
                console.print(f"[bold red]error:[/] {p}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _load(config: Path, overrides: list[str] | None):
    from rutune.config import load_config

    return guarded(lambda: load_config(config, overrides or []))


# ---------------------------------------------------------------- foundation
@app.command()
def validate(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. data.sft.sources.0.percent=80"),
):
    """Check a config (schema, stage links, source files) without loading any model."""
    cfg = _load(config, overrides)
    from rutune.data.prepare import check_sources

    guarded(lambda: check_sources(cfg))
    n_stages = len(cfg.train.stages)
    typer.echo(f"ok: {config} — experiment {cfg.name!r}, {n_stages} training stage(s)")


@app.command("tiny-model")
def tiny_model(out: Path = typer.Option(..., "--out", help="Folder to write the model into."),
               seed: int = typer.Option(0, help="Init seed."),
               vocab_size: int = typer.Option(4096, help="Tokenizer vocabulary size (a few thousand).")):
    """Build the embedded tiny Qwen2-architecture model and its ChatML tokenizer, offline."""
    from rutune.models import build_tiny_model

    path = build_tiny_model(out, seed=seed, vocab_size=vocab_size)
    typer.echo(f"wrote {path}")


@app.command()
def prepare(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    overrides: Optional[list[str]] = typer.Argument(None),
    force: bool = typer.Option(False, help="Redo even if the manifest matches."),
):
    """Adapters → filters → mixture → parquet + manifest; prints a per-source summary."""
    cfg = _load(config, overrides)
    from rutune.data.prepare import print_summary, run_prepare

    manifest = guarded(lambda: run_prepare(cfg, force=force))
    print_summary(manifest)


@data_app.command("stats")
def data_stats(
    path: Path = typer.Argument(..., help="Prepared parquet file (or a prepare/ folder)."),
    tokenizer: str = typer.Option("tiny", help="Tokenizer for token lengths: tiny, a folder, or a hub id."),
    png: Optional[Path] = typer.Option(None, help="Where to write the length histogram (default beside the data)."),
):
    """Rows per source, token-length percentiles, Russian share, and a length histogram PNG."""
    from rutune.data.stats import print_stats

    guarded(lambda: print_stats(path, tokenizer=tokenizer, png=png))


# ---------------------------------------------------------------- train (owned by the training stages)
@app.command()
def train(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. train.stages.0.max_steps=10"),
    stage: Optional[list[str]] = typer.Option(None, "--stage", help="Run only this stage (repeatable)."),
    force: bool = typer.Option(False, help="Retrain even if the stage's manifest matches."),
):
    """Run the training stages (sft, simpo) in order; a killed run resumes with the same command."""
    cfg = _load(config, overrides)
    from rutune.train.stages import run_training

    checkpoints = guarded(lambda: run_training(cfg, force=force, only=list(stage or []) or None))
    for path in checkpoints:
        typer.echo(f"checkpoint: {path}")


# ---------------------------------------------------------------- eval: mmlu, babilong

# ---------------------------------------------------------------- eval: arena
@eval_app.command("arena")
def eval_arena(
    model: Optional[str] = typer.Option(None, "--model", help="Model to answer: `tiny`, a folder, a hub id, or a "
                                        "served model name with --backend openai."),
    judge: Optional[Path] = typer.Option(None, "--judge", help="Judge profile YAML (configs/judges/NAME.yaml); "
                                         "default: RUTUNE_JUDGE_* env vars, else answers only."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Baseline answer file (ru_llm_arena format)."),
    questions: Optional[str] = typer.Option(None, "--questions", help="question.jsonl or a hub dataset id."),
    answers: Optional[Path] = typer.Option(None, "--answers", help="Score an existing answer file instead of "
                                           "generating."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="First N questions only."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default runs/eval/arena/LABEL)."),
    label: Optional[str] = typer.Option(None, "--label", help="Model label in results (default: folder name)."),
    max_new_tokens: int = typer.Option(2048, "--max-new-tokens", min=1),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt"),
    backend: str = typer.Option("hf", "--backend", help="hf, vllm or openai."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
):
    """RU Arena: answers → pairwise judge (both orders) → win rate vs the baseline (0–1) with a 95% CI."""
    from rutune.config_eval import ArenaConfig, BackendConfig
    from rutune.eval.arena import run_arena, summary_line

    if model is None and answers is None:
        fail("give --model PATH (to generate answers) or --answers FILE (to score existing ones)")
    if backend not in ("hf", "vllm", "openai"):
        fail(f"--backend {backend}: expected hf, vllm or openai")
    name = label or Path(str(model or answers)).name.removesuffix(".jsonl") or "model"
    cfg = guarded(lambda: ArenaConfig(questions=questions, baseline=str(baseline) if baseline else None,
                                      answers=str(answers) if answers else None, judge=str(judge) if judge else None,
                                      limit=limit, max_new_tokens=max_new_tokens, system_prompt=system_prompt))
    backend_cfg = guarded(lambda: BackendConfig(kind=backend, batch_size=batch_size))
    out_dir = out or Path("runs") / "eval" / "arena" / name
    results = guarded(lambda: run_arena(cfg, backend_cfg, model, name, out_dir, seed=seed))
    typer.echo(summary_line(results))
    typer.echo(f"wrote {out_dir / 'results.json'}")


# ---------------------------------------------------------------- pipeline, report, serve, demo


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
