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
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a model: mmlu, babilong, arena.")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")

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
    import os

    cfg = _load(config, overrides)
    from rutune.train.stages import run_training

    checkpoints = guarded(lambda: run_training(cfg, force=force, only=list(stage or []) or None))
    if os.environ.get("RANK", "0") == "0":  # under torchrun/accelerate, one line per run, not per process
        for path in checkpoints:
            typer.echo(f"checkpoint: {path}")


# ---------------------------------------------------------------- eval: mmlu, babilong
OPTION_OF_FIELD = {"kind": "backend"}  # config fields whose command-line option has another name


def _eval_config(cls, **fields):
    """Build an eval config block; a bad value is one line naming the option."""
    from pydantic import ValidationError

    try:
        return cls(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        fail(f"--{OPTION_OF_FIELD.get(field, field).replace('_', '-')}: {err['msg']}")


def _progress_run(label: str, fn):
    """Run `fn(progress_callback)` under a rich progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        return guarded(lambda: fn(lambda done, total: bar.update(task, completed=done, total=total)))


def _split_list(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@eval_app.command("mmlu")
def eval_mmlu(
    model: str = typer.Option(..., "--model", help="`tiny`, a model folder, a hub id, or a served model name."),
    backend: str = typer.Option("hf", "--backend", help="hf, vllm or openai."),
    shots: int = typer.Option(0, "--shots", help="Few-shot examples from the same domain (0–5)."),
    fmt: str = typer.Option("mera", "--format", help="mera (MERA rummlu rows) or mmlu_ru (NLPCoreTeam/mmlu_ru)."),
    data: Optional[str] = typer.Option(None, "--data", help="A .jsonl/.parquet file, a folder, or a hub id "
                                       "(default: the bundled mini sample)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (commit) to pin."),
    split: str = typer.Option("test", "--split"),
    domains: Optional[str] = typer.Option(None, "--domains", help="Comma-separated MMLU subjects."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="First N questions only."),
    chat_template: bool = typer.Option(False, "--chat-template/--no-chat-template",
                                       help="Wrap each prompt as one chat user turn (MERA scores raw prompts)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="openai backend: server URL ending in /v1."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default runs/eval/mmlu/LABEL)."),
    label: Optional[str] = typer.Option(None, "--label", help="Model label in results (default: folder name)."),
    seed: int = typer.Option(0, "--seed", help="Shot sampling and bootstrap seed."),
):
    """ruMMLU: letter log-likelihood, accuracy with a 95% CI, per domain, mmlu_ru macro; resumable."""
    from rutune.config_eval import BackendConfig, MmluConfig
    from rutune.eval.mmlu import run_mmlu

    cfg = _eval_config(MmluConfig, path=data, revision=revision, format=fmt, split=split, shots=shots,
                       domains=_split_list(domains), limit=limit, chat_template=chat_template)
    backend_cfg = _eval_config(BackendConfig, kind=backend, batch_size=batch_size, base_url=base_url)
    name = label or Path(model).name or "model"
    out_dir = out or Path("runs") / "eval" / "mmlu" / name
    res = _progress_run("ruMMLU", lambda cb: run_mmlu(cfg, backend_cfg, model, out_dir, seed=seed,
                                                      model_label=name, progress=cb))
    acc, macro = res["metrics"]["accuracy"], res["metrics"]["macro"]
    typer.echo(f"ruMMLU {name}: accuracy {acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] "
               f"(n={acc['n_valid']}/{acc['n_total']}), macro {macro['value']:.3f}")
    typer.echo(f"wrote {out_dir / 'results.json'}")


@eval_app.command("babilong")
def eval_babilong(
    model: str = typer.Option(..., "--model", help="`tiny`, a model folder, a hub id, or a served model name."),
    backend: str = typer.Option("hf", "--backend", help="hf, vllm or openai."),
    tasks: str = typer.Option("qa1,qa2", "--tasks", help="Comma-separated: qa1, qa2."),
    lengths: str = typer.Option("1k,2k,4k", "--lengths", help="Comma-separated context lengths (tokens), e.g. 4k,8k."),
    source: str = typer.Option("generate", "--source", help="`generate`, a LIBRA file/folder, or a hub id "
                               "(ai-forever/LIBRA)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (commit) to pin."),
    samples: Optional[int] = typer.Option(10, "--samples", min=1, help="Items per length (generated; a cap for data)."),
    task_file: Optional[Path] = typer.Option(None, "--task-file", help="Instructions JSON (LIBRA's "
                                             "datasets_config.json is accepted); default: rutune's own."),
    truncate: bool = typer.Option(False, "--middle-truncate/--skip-long",
                                  help="Middle-truncate contexts that do not fit the window (default: skip, count)."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1),
    chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template"),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=1, help="Model window (default: its config)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="openai backend: server URL ending in /v1."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Alias of --samples."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default runs/eval/babilong/LABEL)."),
    label: Optional[str] = typer.Option(None, "--label"),
    seed: int = typer.Option(0, "--seed", help="Generator and bootstrap seed."),
):
    """LIBRA ruBABILong QA1/QA2: containment (LIBRA and normalised), per length, totals with missing = 0."""
    from rutune.config_eval import BabilongConfig, BackendConfig
    from rutune.eval.babilong import run_babilong

    cfg = _eval_config(BabilongConfig, source=source, revision=revision, tasks=_split_list(tasks),
                       lengths=_split_list(lengths), samples_per_length=limit or samples,
                       task_file=str(task_file) if task_file else None, max_new_tokens=max_new_tokens,
                       overlength="middle_truncate" if truncate else "skip")
    backend_cfg = _eval_config(BackendConfig, kind=backend, batch_size=batch_size, base_url=base_url,
                               apply_chat_template=chat_template, max_length=max_length)
    name = label or Path(model).name or "model"
    out_dir = out or Path("runs") / "eval" / "babilong" / name
    res = _progress_run("ruBABILong", lambda cb: run_babilong(cfg, backend_cfg, model, out_dir, seed=seed,
                                                              model_label=name, progress=cb))
    m = res["metrics"]
    parts = [f"{t} {m[t]['value']:.3f} (norm {m[t + '_norm']['value']:.3f})" for t in cfg.tasks]
    typer.echo(f"ruBABILong {name}: " + ", ".join(parts) + f", total {m['total']['value']:.3f}")
    missing = {t: v for t, v in res["extra"]["missing_lengths"].items() if v}
    if missing or res["extra"]["skipped"]:
        typer.echo(f"skipped {res['extra']['skipped']} item(s) longer than the window; lengths counted as 0: {missing}")
    typer.echo(f"wrote {out_dir / 'results.json'}")


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
    base_url: Optional[str] = typer.Option(None, "--base-url", help="--backend openai: the server's …/v1 URL."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="--backend openai: env var with the key."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
):
    """RU Arena: answers → pairwise judge (both orders) → win rate vs the baseline (0–1) with a 95% CI."""
    from rutune.config_eval import ArenaConfig, BackendConfig
    from rutune.eval.arena import run_arena, summary_line

    if model is None and answers is None:
        fail("give --model PATH (to generate answers) or --answers FILE (to score existing ones)")
    backend_cfg = _eval_config(BackendConfig, kind=backend, batch_size=batch_size, base_url=base_url,
                               api_key_env=api_key_env)
    name = label or Path(str(model or answers)).name.removesuffix(".jsonl") or "model"
    cfg = guarded(lambda: ArenaConfig(questions=questions, baseline=str(baseline) if baseline else None,
                                      answers=str(answers) if answers else None, judge=str(judge) if judge else None,
                                      limit=limit, max_new_tokens=max_new_tokens, system_prompt=system_prompt))
    out_dir = out or Path("runs") / "eval" / "arena" / name
    results = guarded(lambda: run_arena(cfg, backend_cfg, model, name, out_dir, seed=seed))
    typer.echo(summary_line(results))
    typer.echo(f"wrote {out_dir / 'results.json'}")


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


FORCE_HELP = "Redo a stage even if unchanged: prepare, train, a stage name, eval, mmlu, babilong, arena, nll, report."


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. data.sft.sources.0.percent=80"),
    force: Optional[list[str]] = typer.Option(None, "--force", help=FORCE_HELP),
):
    """prepare → train → eval → report; unchanged stages are skipped, interrupted ones resume."""
    cfg = _load(config, overrides)
    from rutune.pipeline import run_experiment

    _, outputs = guarded(lambda: run_experiment(cfg, force=set(force or []), echo=typer.echo))
    for kind, path in sorted(outputs.items()):
        typer.echo(f"report ({kind}): {path}")


@app.command()
def sweep(
    grid: Path = typer.Argument(..., help="Grid YAML: base experiment + variants (dotted overrides)."),
    force: Optional[list[str]] = typer.Option(None, "--force", help=FORCE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only expand and validate the experiments."),
):
    """Run every experiment of a grid (shared stages computed once) and one report over all of them."""
    from rutune.sweep import expand, run_sweep

    name, configs = guarded(lambda: expand(grid))
    for cfg in configs:
        typer.echo(f"experiment {cfg.name}")
    if dry_run:
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
