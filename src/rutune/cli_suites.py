"""`rutune eval <suite>`: one command per registered eval suite, generated from the suite's config model.

Every field of the suite's config becomes an option (`max_new_tokens` → `--max-new-tokens`, lists as
comma-separated text, booleans as `--x/--no-x`), plus the backend's fields (`--backend` for its kind,
`--batch-size`, `--base-url`, …) and the common `--model --label --out --seed --rounds`. An option left out
keeps the config default; the values are validated by the same pydantic models as an experiment YAML, and a bad
value is one line naming the option. A suite may give a field an extra, shorter name (`cli_aliases`).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import typer

from rutune.eval.backend_base import BackendConfig
from rutune.eval.suites import SUITES, EvalRequest, Suite, run_suite

COMMON = ("model", "label", "out", "seed", "rounds")
BACKEND_OPTION = {"kind": "backend"}  # backend fields whose option has another name


def _option_type(annotation: Any) -> tuple[type, bool]:
    """(the click-level type for a field's annotation, whether it is a comma-separated list)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _option_type(args[0])
    if origin in (list, tuple):
        return str, True
    if origin is Literal:
        return str, False
    if args and origin is not None:  # Optional[X] / X | None / unions: the first non-None member decides
        return _option_type(args[0])
    if annotation in (bool, int, float, str):
        return annotation, False
    return str, False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _params(model: type, rename: dict[str, str], aliases: dict[str, str], taken: set[str]) -> tuple[list, dict]:
    """typer parameters for a config model's fields; returns (parameters, python name → (field, is_list))."""
    params, fields = [], {}
    for name, info in model.model_fields.items():
        option = rename.get(name, name)
        if option in taken:
            raise ValueError(f"CLI option --{option} is defined twice (suite field vs backend/common option)")
        taken.add(option)
        kind, is_list = _option_type(info.annotation)
        names = [_flag(option)] + ([_flag(aliases[name])] if name in aliases else [])
        if kind is bool:
            names = [f"{n}/--no-{n[2:]}" for n in names]
        doc = (info.description or "") + (" (comma-separated)" if is_list else "")
        default = info.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        param = f"opt_{option}"
        params.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                                        default=typer.Option(None, *names, help=f"{doc} (default: {shown})".strip(),
                                                             show_default=False)))
        fields[param] = (name, is_list)
    return params, fields


def _values(kwargs: dict, fields: dict) -> dict:
    out = {}
    for param, (name, is_list) in fields.items():
        value = kwargs.get(param)
        if value is None:
            continue
        out[name] = [v.strip() for v in value.split(",") if v.strip()] if is_list else value
    return out


def _build(cls, values: dict, rename: dict[str, str], fail: Callable[[str], None]):
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        fail(f"{_flag(rename.get(field, field))}: {err['msg'].removeprefix('Value error, ')}")


def make_command(suite: Suite, *, guarded: Callable, fail: Callable[[str], None], progress: Callable) -> Callable:
    """The `rutune eval <suite.name>` function, its signature built from the suite's and the backend's configs."""
    taken = set(COMMON)
    suite_params, suite_fields = _params(suite.config, {}, suite.cli_aliases, taken)
    backend_params, backend_fields = _params(BackendConfig, BACKEND_OPTION, {}, taken)
    model_help = "`tiny`, a model folder, a hub id, or a served model name (--backend openai)."
    common = [
        inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                          default=typer.Option(None, "--model", help=model_help)),
        inspect.Parameter("label", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                          default=typer.Option(None, "--label", help="Model label in results (default: its name).")),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                          default=typer.Option(None, "--out", help=f"Output folder (default runs/eval/{suite.name}/"
                                                                    "LABEL).")),
        inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                          default=typer.Option(0, "--seed", help="Sampling and bootstrap seed.")),
        inspect.Parameter("rounds", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                          default=typer.Option(1000, "--rounds", min=10, help="Bootstrap rounds of the CIs.")),
    ]

    def command(**kwargs):
        cfg = _build(suite.config, _values(kwargs, suite_fields), {}, fail)
        backend = _build(BackendConfig, _values(kwargs, backend_fields), BACKEND_OPTION, fail)
        model = kwargs["model"]
        if model is None and suite.needs_model:
            fail("--model: give the model to evaluate")
        if model is None and not getattr(cfg, "answers", None):
            fail("give --model PATH (to generate answers) or --answers FILE (to score existing ones)")
        if model is not None and backend.kind in ("hf", "vllm"):
            from rutune.eval.backends import resolve_model

            guarded(lambda: resolve_model(model))  # a missing model fails before any folder is made
        label = kwargs["label"] or (Path(str(model or getattr(cfg, "answers", "") or "model")).name
                                    .removesuffix(".jsonl") or "model")
        out = kwargs["out"] or Path("runs") / "eval" / suite.name / label
        request = EvalRequest(cfg, backend, model, label, Path(out), seed=kwargs["seed"], rounds=kwargs["rounds"])
        if suite.own_progress:  # the suite draws its own bars (one live display at a time)
            results = guarded(lambda: run_suite(suite, request))
        else:
            results = progress(suite.name, lambda cb: run_suite(suite, dataclasses.replace(request, progress=cb)))
        typer.echo(suite.summary(results))
        typer.echo(f"wrote {Path(out) / 'results.json'}")

    command.__signature__ = inspect.Signature(common + suite_params + backend_params)
    command.__doc__ = suite.title
    command.__name__ = f"eval_{suite.name}"
    return command


def add_suite_commands(app: typer.Typer, *, guarded: Callable, fail: Callable[[str], None],
                       progress: Callable) -> None:
    """One command per registered suite; idempotent, so a suite registered later (a plugin, a test) is added by
    calling it again (`rutune.cli.refresh_eval_commands`)."""
    present = {c.name for c in app.registered_commands}
    for suite in SUITES:
        if suite.name not in present:
            app.command(suite.name, help=suite.title)(make_command(suite, guarded=guarded, fail=fail,
                                                                   progress=progress))
