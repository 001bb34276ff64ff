"""`rutune vocab …`: Russian vocabulary extension outside an experiment (the `vocab` training stage does the same
inside one). Thin glue over `rutune.data.vocab` and `rutune.train.embedding_init`; errors are one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

vocab_app = typer.Typer(no_args_is_help=True, help="Extend a model's byte-level BPE tokenizer with Russian merges.")
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@vocab_app.command("extend")
def extend(
    model: str = typer.Option(..., "--model", help="Model folder, registered name (tiny, smollm2-135m-instruct) "
                              "or tokenizer folder."),
    out: Path = typer.Option(..., "--out", help="Output folder: tokenizer/ (and checkpoint/ with --init)."),
    new_tokens: int = typer.Option(8000, "--new-tokens", help="Number of new Russian tokens."),
    init: bool = typer.Option(True, "--init/--no-init", help="Also write a mean-initialised checkpoint."),
    n_words: int = typer.Option(50_000, "--n-words", help="wordfreq words to learn merges from."),
    wordfreq: bool = typer.Option(True, "--wordfreq/--no-wordfreq", help="Use the wordfreq Russian list."),
    held_out_share: float = typer.Option(0.25, "--held-out-share", help="Share of sample documents held out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split."),
) -> None:
    """Learn Russian merges on top of the model's tokenizer; print the extension report and held-out chars/token."""
    from rutune.data.russian_text import russian_text
    from rutune.data.vocab import extend_tokenizer_dir
    from rutune.data.vocab_bpe import VocabError
    from rutune.data.vocab_metrics import tokenizer_stats
    from rutune.models import ModelError, resolve_model_path
    from rutune.rundir import write_json_atomic

    try:
        src = resolve_model_path(model)
        if not Path(src).is_dir():
            _fail(f"--model {model}: not a local folder (download it first, or give a registered name)")
        text = russian_text(n_words=n_words, use_wordfreq=wordfreq, held_out_share=held_out_share, seed=seed)
        report = extend_tokenizer_dir(src, out / "tokenizer", text.merge_counts, new_tokens)
        from transformers import AutoTokenizer

        before = tokenizer_stats(AutoTokenizer.from_pretrained(src), text.heldout_texts)
        after = tokenizer_stats(AutoTokenizer.from_pretrained(str(out / "tokenizer")), text.heldout_texts)
        init_report = None
        if init:
            if not (Path(src) / "config.json").is_file():
                _fail(f"--model {model}: has no model weights (config.json) to initialise; use --no-init")
            from rutune.train.embedding_init import adapt_checkpoint

            init_report = adapt_checkpoint(src, out / "tokenizer", out / "checkpoint").to_dict()
    except (VocabError, ModelError) as e:
        _fail(str(e).splitlines()[0])
    summary = {"model": model, "source": src, "extension": report.to_dict(), "text": text.manifest(),
               "heldout_before": before, "heldout_after": after, "init": init_report}
    write_json_atomic(out / "vocab_extend.json", summary)
    print(json.dumps({"new_tokens": report.num_new_tokens, "first_new_id": report.first_new_id,
                      "vocab_size": report.vocab_size, "unreachable": report.unreachable,
                      "chars_per_token": [round(before["chars_per_token"], 3), round(after["chars_per_token"], 3)],
                      "tokens_per_word": [round(before["tokens_per_word"], 3), round(after["tokens_per_word"], 3)],
                      "out": str(out)}, ensure_ascii=False))


def _rows(run: Path, model: str, name: str) -> dict[str, dict]:
    from rutune.items import read_items

    path = run / "eval" / "vocab" / model / name
    if not path.is_file():
        _fail(f"{path}: not found; run the experiment's eval (rutune run CONFIG) first")
    return {r["id"]: r for r in read_items(path)}


def _ratio(a: dict, b: dict, num: str, den: str, rounds: int) -> dict:
    """Paired ratio of aggregate ratios over the items both files hold (`suites.vocab.paired_ratio`)."""
    from rutune.eval.suites.vocab import paired_ratio

    ids = [i for i in a if i in b]
    if not ids:
        _fail("no common items to pair (different held-out splits?)")
    return paired_ratio([a[i][num] for i in ids], [a[i][den] for i in ids], [b[i][num] for i in ids],
                        [b[i][den] for i in ids], rounds=rounds)


def _cpu(run: Path) -> float | None:
    """User + system CPU seconds of `rutune train` if `make demo-vocab` recorded them (`train_cpu.txt`)."""
    path = run / "train_cpu.txt"
    try:
        user, system = path.read_text(encoding="utf-8").split()[-2:]
        return round(float(user) + float(system), 1)
    except (OSError, ValueError):
        return None


def _answers(gen: dict[str, dict], count) -> float | None:
    """`vocab_metrics.pooled_share` over the answers kept in `generation.jsonl` (None if none was kept)."""
    from rutune.data.vocab_metrics import pooled_share

    share = pooled_share([g["text"] for g in gen.values() if isinstance(g.get("text"), str)], count)
    return None if share is None else round(share, 4)


@vocab_app.command("compare")
def compare(
    original: Path = typer.Argument(..., help="Run folder of the experiment on the original tokenizer."),
    adapted: Path = typer.Argument(..., help="Run folder of the experiment with the vocab stage."),
    model: str = typer.Option("sft", "--model", help="Model label compared in both runs."),
    rounds: int = typer.Option(2000, "--rounds", help="Bootstrap rounds."),
) -> None:
    """The three ratios of docs/vocab.md from two runs' `eval/vocab` items, with paired-bootstrap CIs.

    chars/token: adapted `model` vs the original base tokenizer; generation chars/s: adapted `model` vs the
    original base model and vs the original-tokenizer `model`; bits/char: adapted vs original `model`. Beside
    them, each model's share of repeated word 4-grams and of Cyrillic letters in its answers (a fast loop, or
    code instead of Russian, is no speed-up)."""
    from rutune.data.vocab_metrics import cyrillic_letters, repeated_ngrams

    a_items, o_items = _rows(adapted, model, "items.jsonl"), _rows(original, model, "items.jsonl")
    base_items = _rows(original, "base", "items.jsonl")
    a_gen, o_gen = _rows(adapted, model, "generation.jsonl"), _rows(original, model, "generation.jsonl")
    base_gen = _rows(original, "base", "generation.jsonl")
    out = {
        "chars_per_token_vs_base": _ratio(a_items, base_items, "chars", "tokens", rounds),
        "gen_chars_per_s_vs_base": _ratio(a_gen, base_gen, "chars", "seconds", rounds),
        "gen_chars_per_s_vs_same_sft": _ratio(a_gen, o_gen, "chars", "seconds", rounds),
        "bits_per_char_vs_same_sft": _ratio(a_items, o_items, "bits", "chars", rounds),
        "train_cpu_seconds": {"original": _cpu(original), "adapted": _cpu(adapted)},
        # read beside the speed ratios: a greedy loop, or code instead of Russian, is fast (docs/vocab.md)
        **{key: {"original base": _answers(base_gen, count), f"original {model}": _answers(o_gen, count),
                 f"adapted {model}": _answers(a_gen, count)}
           for key, count in (("gen_repeat_4", repeated_ngrams), ("gen_cyrillic_share", cyrillic_letters))},
    }
    for name, value in out.items():
        if "ratio" in value:
            print(f"{name:30s} {value['ratio']:.3f}  95% CI [{value['ci_low']:.3f}, {value['ci_high']:.3f}]  "
                  f"p={value['p_value']:.4f}  n={value['n']}")
    print(f"{'train CPU seconds':30s} original {out['train_cpu_seconds']['original']}, "
          f"adapted {out['train_cpu_seconds']['adapted']}")
    for key, title in (("gen_repeat_4", "gen repeated word 4-grams"), ("gen_cyrillic_share", "gen Cyrillic letters")):
        print(f"{title:30s} " + ", ".join(f"{k} {v}" for k, v in out[key].items()))
    for label, run in (("original base", original / "eval" / "vocab" / "base"),
                       (f"adapted {model}", adapted / "eval" / "vocab" / model)):
        try:
            timing = json.loads((run / "results.json").read_text(encoding="utf-8"))["extra"]["timing"]
        except (OSError, KeyError, json.JSONDecodeError):
            continue
        out.setdefault("timing", {})[label] = timing
        print(f"{'timing ' + label:30s} {timing['device']}, {timing['torch_threads']} threads, load average "
              f"{' '.join(f'{x:.1f}' for x in timing['load_average'])}")
    from rutune.rundir import write_json_atomic

    write_json_atomic(adapted / "vocab_compare.json", {"original": str(original), "adapted": str(adapted),
                                                       "model": model, **out})


__all__ = ["vocab_app"]
