"""Where a training stage reads and writes: its folder layout, the prepared data it trains on (checked before
any model loads), where it starts from (the base model or an earlier stage), and its tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rutune.rundir import RunDir, read_manifest
from rutune.train.errors import TrainError

METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class StagePaths:
    """Files of one training stage under `train/<stage>/`."""

    root: Path

    @classmethod
    def of(cls, run: RunDir, stage_name: str) -> "StagePaths":
        return cls(run.train(stage_name))

    @property
    def checkpoint(self) -> Path:
        """The final Hugging Face checkpoint (what `init_from` of a later stage and eval load)."""
        return self.root / "checkpoint"

    @property
    def trainer_dir(self) -> Path:
        """Intermediate Trainer checkpoints (`checkpoint-N/`), used only to resume."""
        return self.root / "trainer"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def loss_png(self) -> Path:
        return self.root / "loss.png"

    @property
    def cache(self) -> Path:
        """Tokenised datasets, shared by the stages of one run (keyed by data, tokenizer and template hashes)."""
        return self.root.parent / "_cache"


def prepared_data(run: RunDir, file_name: str, columns: tuple[str, ...], what: str, *,
                  block: str) -> tuple[Path, str | None]:
    """A prepared parquet of the run and its block's content hash (`data_hash`); TrainError when missing, empty or
    malformed.

    `what` names the data in messages ("SFT", "preference"); `block` is its key in the prepare manifest ("sft",
    "preference"); the check reads only the parquet footer.
    """
    import pyarrow.parquet as pq

    path = run.prepare / file_name
    if not path.is_file():
        raise TrainError(f"{path}: prepared {what} data not found; run `rutune prepare CONFIG` first")
    try:
        parquet_file = pq.ParquetFile(path)
        meta, present = parquet_file.metadata, parquet_file.schema_arrow.names
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise TrainError(f"{path}: not a readable parquet file ({type(e).__name__}); rerun `rutune prepare CONFIG`")
    missing = [c for c in columns if c not in present]
    if missing:
        raise TrainError(f"{path}: missing column(s) {', '.join(missing)}; rerun `rutune prepare CONFIG`")
    if meta.num_rows == 0:
        raise TrainError(f"{path}: prepared {what} data has 0 rows; check the data sources and filters, then "
                         f"re-prepare")
    return path, data_hash(run, block)


def data_hash(run: RunDir, block: str) -> str | None:
    """The content hash prepare recorded for one data block (`"sft"` or `"preference"`), None when absent.

    Prepare writes it per block (`manifest["sft"]["content_hash"]`), so a stage's identity follows only its own
    data: changing `data.preference` does not retrain an SFT stage, and vice versa.
    """
    block_manifest = (read_manifest(run.prepare) or {}).get(block)
    return block_manifest.get("content_hash") if isinstance(block_manifest, dict) else None


def init_source(cfg, stage, run: RunDir) -> str:
    """What a stage loads: the base model (`init_from: base`) or an earlier stage's final checkpoint."""
    from rutune.models import resolve_model_path

    if stage.init_from == "base":
        # GGUF bases resolve to their converted safetensors folder, the same weights eval loads.
        return resolve_model_path(cfg.base_model.path, gguf_file=cfg.base_model.gguf_file)
    names = [s.name for s in cfg.train.stages]
    if stage.init_from not in names or names.index(stage.init_from) >= names.index(stage.name):
        known = ", ".join(["base", *names[: names.index(stage.name)]]) if stage.name in names else "base"
        raise TrainError(f"train stage {stage.name}: init_from {stage.init_from!r} is not an earlier stage "
                         f"(expected one of: {known})")
    ckpt = run.checkpoint(stage.init_from)
    if not (ckpt / "config.json").exists():
        raise TrainError(f"train stage {stage.name}: starts from stage {stage.init_from!r}, whose checkpoint {ckpt} "
                         f"does not exist yet; run `rutune train CONFIG --stage {stage.init_from}` first")
    return str(ckpt)


def load_stage_tokenizer(path: str):
    """The tokenizer a stage trains with; it must carry a chat template (masks and packing are defined by it).

    A checkpoint folder is checked against its own tokenizer first (`vocab.check_vocab_pairing`): an adapted
    vocabulary's weights with the old tokenizer (or the reverse) is a one-line error, not silent garbage."""
    from rutune.data.templates import TemplateError, load_tokenizer
    from rutune.data.vocab import check_vocab_pairing
    from rutune.data.vocab_bpe import VocabError

    try:
        if (Path(path) / "config.json").is_file() and (Path(path) / "tokenizer.json").is_file():
            check_vocab_pairing(path, path)
        tok = load_tokenizer(path)
    except (TemplateError, VocabError) as e:
        raise TrainError(str(e).splitlines()[0]) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
