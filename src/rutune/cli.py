"""The `rutune` command. Thin glue: parse arguments, load config, call a stage, print a one-line error.

Every command turns known failures (config, data, model, judge) into one line on stderr and exit code 2;
a traceback means a bug in rutune.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

# transformers' per-shard progress bars drown the stage bars; HF_HUB_DISABLE_PROGRESS_BARS=0 brings them back.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Adapt instruction LLMs to Russian and measure it.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect prepared data.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate one model with one suite (one command per suite).")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
from rutune.cli_vocab import vocab_app  # noqa: E402 - `rutune vocab …`, its own module

app.add_typer(vocab_app, name="vocab")
from rutune.cli_score import score_app  # noqa: E402 - `rutune score …`, its own module

app.add_typer(score_app, name="score")

console = Console(stderr=True)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def known_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, not a bug."""
    from rutune.config import ConfigError
    from rutune.models import ModelError
    from rutune.records import RecordError

    errors: list[type[BaseException]] = [ConfigError, ModelError, RecordError, FileNotFoundError]
    for mod, name in (("rutune.data.sources", "DataError"), ("rutune.eval.errors", "EvalError"),
                      ("rutune.train.errors", "TrainError"), ("rutune.items", "ItemsError"),
                      ("rutune.registry", "RegistryError"), ("rutune.report.collect", "ReportError")):
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
    from rutune.data.prepare import prepare_hash, print_summary, run_prepare
    from rutune.pipeline import eval_set_inputs, eval_set_items

    manifest = guarded(lambda: run_prepare(cfg, force=force, known_hash=prepare_hash(cfg, eval_set_inputs(cfg)),
                                           eval_sets=eval_set_items(cfg)))
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
    """Run the training stages in order; a killed run resumes with the same command."""
    import os

    cfg = _load(config, overrides)
    from rutune.train.stages import run_training

    checkpoints = guarded(lambda: run_training(cfg, force=force, only=list(stage or []) or None))
    if os.environ.get("RANK", "0") == "0":  # under torchrun/accelerate, one line per run, not per process
        for path in checkpoints:
            typer.echo(f"checkpoint: {path}")


# ---------------------------------------------------------------- eval: one command per registered suite
def _progress_run(label: str, fn):
    """Run `fn(progress_callback)` under a rich progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        return guarded(lambda: fn(lambda done, total: bar.update(task, completed=done, total=total)))


def _split_list(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def refresh_eval_commands() -> None:
    """`rutune eval <suite>` for every registered suite (call again after registering one at run time)."""
    from rutune.cli_suites import add_suite_commands

    add_suite_commands(eval_app, guarded=guarded, fail=fail, progress=_progress_run)


refresh_eval_commands()


# ---------------------------------------------------------------- pipeline, report, serve, demo
@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories: one experiment, or every run of a sweep."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN_DIR/report for one run)."),
    baseline: str = typer.Option("base", "--baseline", help="Model label the others are tested against."),
    formats: str = typer.Option("md,csv,html", "--formats", help="Comma-separated: md, csv, html."),
    rounds: int = typer.Option(1000, "--rounds", min=10, help="Bootstrap rounds (paired tests, length CIs)."),
    seed: int = typer.Option(0, "--seed"),
):
    """Comparison table (95% CIs, ▲/▼ vs the base), mixtures, contamination, figures → md, csv, one html file."""
    from rutune.report import ReportError, build_report

    if out is None and len(run_dirs) > 1:
        fail("--out DIR is needed when reporting on several run directories")
    try:
        written = build_report(run_dirs, out or run_dirs[0] / "report", baseline_label=baseline,
                               formats=_split_list(formats) or [], rounds=rounds, seed=seed)
    except ReportError as e:
        fail(str(e))
    for key, path in written.items():
        if not key.startswith("plot:"):
            typer.echo(f"wrote {path}")

@app.command()
def serve(
    checkpoint: str = typer.Argument(..., help="Checkpoint folder (safetensors, tokenizer, chat template) or `tiny`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address; anything but loopback requires an API key."),
    port: int = typer.Option(8000, "--port"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Model id clients send (default: the folder)."),
    api_key_env: str = typer.Option("RUTUNE_SERVE_API_KEY", "--api-key-env",
                                    help="Env var holding the API key (required off loopback)."),
    max_tokens_cap: Optional[int] = typer.Option(None, "--max-tokens-cap", min=1,
                                                 help="Largest max_tokens accepted (default: the model's context)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the checkpoint's own code."),
):
    """OpenAI-compatible server (/v1/models, /v1/chat/completions, /v1/completions) for one checkpoint."""
    from rutune.serve import ServeError, run_server

    try:
        guarded(lambda: run_server(checkpoint, host=host, port=port, model_name=model_name, api_key_env=api_key_env,
                                   max_tokens_cap=max_tokens_cap, trust_remote_code=trust_remote_code,
                                   log=lambda line: typer.echo(line, err=True)))
    except ServeError as e:
        fail(str(e))


def _force_help() -> str:
    from rutune.pipeline import force_names

    return "Redo a stage even if unchanged: " + ", ".join(force_names()) + "."


FORCE_HELP = _force_help()


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. data.sft.sources.0.percent=80"),
    force: Optional[list[str]] = typer.Option(None, "--force", help=FORCE_HELP),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Run only this stage (repeatable), e.g. "
                                             "prepare, train/sft, eval/mmlu/base, report."),
):
    """prepare → train → eval → report; unchanged stages are skipped, interrupted ones resume."""
    cfg = _load(config, overrides)
    from rutune.pipeline import run_experiment

    _, outputs = guarded(lambda: run_experiment(cfg, force=set(force or []), echo=typer.echo, only=list(only or [])))
    for kind, path in sorted(outputs.items()):
        typer.echo(f"report ({kind}): {path}")


@app.command()
def sweep(
    grid: Path = typer.Argument(..., help="Grid YAML: base experiment + variants (dotted overrides)."),
    force: Optional[list[str]] = typer.Option(None, "--force", help=FORCE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only expand and validate the experiments."),
    launcher: str = typer.Option("local", "--launcher", help="local: run here, one experiment after another; "
                                 "slurm: submit every stage as a Slurm job (see docs/slurm.md)."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Slurm: job scripts, logs and jobs.json "
                                             "(default <output_root>/<sweep name>/slurm)."),
    wait: bool = typer.Option(False, "--wait", help="Slurm: wait until every job has finished, print the status."),
    status: bool = typer.Option(False, "--status", help="Slurm: print each job's state and log; submit nothing."),
    only_report: bool = typer.Option(False, "--only-report", help="Only build the combined report from the "
                                     "experiments' finished stages (the Slurm sweep's last job)."),
):
    """Run every experiment of a grid (shared stages computed once) and one report over all of them."""
    from rutune.sweep import expand, run_sweep, sweep_report

    if launcher not in ("local", "slurm"):
        fail(f"--launcher {launcher}: expected local or slurm")
    if launcher == "local" and (state_dir or wait or status):
        fail("--state-dir, --wait and --status need --launcher slurm")
    if launcher == "slurm" and force:
        fail("--force is not passed to Slurm jobs (every rerun would redo the stage): run `rutune run CONFIG "
             "--force STAGE` for the experiment, then submit again")
    name, configs = guarded(lambda: expand(grid))
    if only_report:
        outputs = guarded(lambda: sweep_report(name, configs, force=set(force or []), echo=typer.echo))
        for kind, path in sorted(outputs.items()):
            typer.echo(f"report ({kind}): {path}")
        return
    for cfg in configs:
        typer.echo(f"experiment {cfg.name}")
    if dry_run:
        return
    if launcher == "slurm":
        from rutune.launch_slurm import LaunchError
        from rutune.sweep_slurm import submit_sweep, sweep_status, wait_sweep

        try:
            if not status:
                guarded(lambda: submit_sweep(grid, state_dir, expanded=(name, configs), echo=typer.echo))
            if wait:
                wait_sweep(name, configs, state_dir)
            rows = sweep_status(name, configs, state_dir) if status or wait else {}
        except LaunchError as e:
            fail(str(e))
        if any(r.state in ("failed", "died", "blocked", "cancelled") for r in rows.values()):
            raise typer.Exit(1)
        return
    outputs = guarded(lambda: run_sweep(grid, force=set(force or []), echo=typer.echo, expanded=(name, configs)))
    for kind, path in sorted(outputs.items()):
        typer.echo(f"report ({kind}): {path}")


@app.command()
def demo(config: Path = typer.Option(Path("configs/experiments/demo.yaml"), help="The demo experiment."),
         force: Optional[list[str]] = typer.Option(None, "--force", help=FORCE_HELP)):
    """The whole study on the embedded tiny model and bundled samples, offline, in minutes."""
    cfg = _load(config, None)
    from rutune.eval.judge import resolve_judge
    from rutune.pipeline import run_experiment

    if cfg.eval.arena is not None and guarded(lambda: resolve_judge(cfg.eval.arena.judge)) is None:
        typer.echo("arena: no judge configured — answers and lengths only. To judge, set RUTUNE_JUDGE_BASE_URL, "
                   "RUTUNE_JUDGE_MODEL and RUTUNE_JUDGE_API_KEY (see docs/arena.md).")
    _, outputs = guarded(lambda: run_experiment(cfg, force=set(force or []), echo=typer.echo))
    if "html" in outputs:
        typer.echo(f"HTML report: {Path(outputs['html']).resolve()}")



def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
