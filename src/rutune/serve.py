"""`rutune serve CHECKPOINT`: one checkpoint behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

This module loads the checkpoint, decides the API-key policy and generates text; `rutune.serve_app` is the HTTP
layer (routes, request validation, OpenAI-style errors, SSE). One request at a time runs through the model (a
lock): a research server for evals and demos, not a batching engine (use vLLM for throughput).

The import arrow points one way, serve → serve_app: the HTTP layer defines what it asks of a generator (`Sampling`
in, `Step`s out, `GenerationFailed` for a 500) and never imports this module; the names are re-exported here.

Generation follows the request only. The checkpoint's `generation_config.json` sampling defaults (e.g. a
repetition penalty) are not applied, so `temperature: 0` is plain greedy decoding, token for token what
`model.generate(do_sample=False)` returns.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from rutune.serve_app import GenerationFailed, Sampling, Step, create_app

DEFAULT_API_KEY_ENV = "RUTUNE_SERVE_API_KEY"


class ServeError(ValueError):
    """Bad input to the server (host/key policy, checkpoint); one line, with the fix."""


# ---------------------------------------------------------------- host and key policy

def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); any other name or address is exposed."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key_for(host: str, api_key_env: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The key clients must send, read from `api_key_env`; None means no key is checked.

    A host other than loopback requires the key (the server would otherwise be open to the network). On loopback
    a key is checked when the variable is set.
    """
    environ = os.environ if environ is None else environ
    key = environ.get(api_key_env, "")
    if key:
        return key
    if not is_loopback(host):
        raise ServeError(f"--host {host} is reachable from other machines, so an API key is required: set the "
                         f"environment variable {api_key_env} (or name another with --api-key-env)")
    return None


def startup_line(*, model_name: str, checkpoint: str, host: str, port: int, api_key_env: str,
                 key_required: bool) -> str:
    """What the server says when it starts; names the key's variable, never the key."""
    shown = f"[{host}]" if ":" in host else host
    auth = (f"API key required (Authorization: Bearer, from ${api_key_env})" if key_required
            else "no API key (loopback only)")
    return f"rutune serve: {model_name!r} from {checkpoint} at http://{shown}:{port}/v1 — {auth}"


# ---------------------------------------------------------------- the checkpoint

@dataclass
class Checkpoint:
    model: object
    tokenizer: object
    path: str
    window: int  # tokens: prompt + completion
    eos_ids: list[int]

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def load_checkpoint(checkpoint: str, *, trust_remote_code: bool = False, dtype: str = "auto",
                    device: str | None = None) -> Checkpoint:
    """Load an HF checkpoint folder (safetensors only) or `tiny`; failures are one-line ServeErrors.

    The same loader as the `hf` eval backend, so a served model and an evaluated one are the same weights.
    """
    from rutune.eval.backend_hf import load_model_and_tokenizer
    from rutune.eval.errors import EvalError
    from rutune.models import ModelError, resolve_model_path

    try:
        path = resolve_model_path(checkpoint)
    except ModelError as e:
        raise ServeError(str(e)) from None
    if not Path(path).is_dir():
        raise ServeError(f"checkpoint {checkpoint}: folder not found")
    try:
        model, tokenizer, path = load_model_and_tokenizer(path, dtype=dtype, device=device,
                                                          trust_remote_code=trust_remote_code)
    except EvalError as e:
        raise ServeError(str(e).replace(f"model {path}", f"checkpoint {checkpoint}", 1)) from None
    window = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Checkpoint(model=model, tokenizer=tokenizer, path=path, window=int(window), eos_ids=sorted(eos_ids))


# ---------------------------------------------------------------- generation

class Detokenizer:
    """Incremental decoding: text appears once it no longer changes (no half UTF-8 characters, no
    SentencePiece leading-space surprises), by re-decoding a short window of recent tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (at the end of a generation)."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


def find_stop(text: str, stop: tuple[str, ...]) -> int | None:
    """Index of the earliest stop string in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many trailing characters might start a stop string, so a stream must not send them yet."""
    longest = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


_END = object()


class Generator:
    """Runs one request at a time through the checkpoint: streamed generation and prompt log-probs."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.lock = threading.Lock()

    def _config(self, sampling: Sampling):
        from transformers import GenerationConfig

        sample = sampling.temperature > 0
        tok = self.checkpoint.tokenizer
        # Knobs left None would be filled from the checkpoint's generation_config.json; set them all.
        warpers = dict(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, min_p=0.0,
                       typical_p=1.0) if sample else dict(temperature=1.0, top_p=1.0)
        return GenerationConfig(max_new_tokens=sampling.max_tokens, do_sample=sample, num_beams=1,
                                repetition_penalty=1.0, no_repeat_ngram_size=0, **warpers,
                                pad_token_id=tok.pad_token_id, eos_token_id=self.checkpoint.eos_ids)

    def stream(self, prompt_ids: list[int], sampling: Sampling,
               cancel: threading.Event | None = None) -> Iterator[Step]:
        """Steps of generated text; the last one carries the finish reason. Setting `cancel` (a client gone)
        stops generation at the next token.

        The model lock is taken before generation starts and released by the generating thread when
        `model.generate` returns, so a consumer that stops early never leaves the model busy or shared."""
        if sampling.max_tokens <= 0:
            yield Step("", finish_reason="length")
            return
        yield from self._stream(prompt_ids, sampling, threading.Event() if cancel is None else cancel)

    def _stream(self, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event) -> Iterator[Step]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        tokens_out: queue.Queue = queue.Queue()

        class ToQueue(BaseStreamer):
            def __init__(self):
                self.prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate() first passes the prompt
                    self.prompt_seen = True
                    return
                for t in value.reshape(-1).tolist():
                    tokens_out.put(int(t))

            def end(self):
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        model = self.checkpoint.model
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
        config = self._config(sampling)

        def work():
            try:
                if sampling.temperature > 0 and sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                with torch.inference_mode():
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                   streamer=ToQueue(), stopping_criteria=StoppingCriteriaList([Cancelled()]))
            except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
                tokens_out.put(e)
            finally:
                tokens_out.put(_END)
                self.lock.release()

        worker = threading.Thread(target=work, name="rutune-generate", daemon=True)
        self.lock.acquire()
        try:
            worker.start()
        except BaseException:
            self.lock.release()
            raise
        try:
            yield from self._consume(tokens_out, sampling)
        finally:
            cancel.set()

    def _consume(self, tokens_out: queue.Queue, sampling: Sampling) -> Iterator[Step]:
        eos = set(self.checkpoint.eos_ids)
        detok = Detokenizer(self.checkpoint.tokenizer)
        tokens: list[int] = []
        text, sent, finish = "", 0, "length"
        while True:
            item = tokens_out.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise GenerationFailed(f"generation failed: {type(item).__name__}: {item}") from item
            if item in eos:
                finish = "stop"
                break
            tokens.append(item)
            text += detok.add(item)
            cut = find_stop(text, sampling.stop)
            if cut is not None:
                yield Step(text[sent:cut], finish_reason="stop", n_tokens=len(tokens), token_ids=tuple(tokens))
                return
            safe = len(text) - held_back(text, sampling.stop)
            if safe > sent:
                yield Step(text[sent:safe])
                sent = safe
            if len(tokens) >= sampling.max_tokens:
                break
        text += detok.flush()
        cut = find_stop(text, sampling.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
        yield Step(text[sent:], finish_reason=finish, n_tokens=len(tokens), token_ids=tuple(tokens))

    def prompt_logprobs(self, ids: list[int], top_n: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
        """For each token: its log-prob given the tokens before it (None for the first) and the `top_n` most
        likely tokens at that position, as (token id, log-prob). One forward, computed in slices of positions."""
        import torch

        model = self.checkpoint.model
        out: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])]
        with self.lock, torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0]
            for start in range(0, len(ids) - 1, 256):
                stop = min(start + 256, len(ids) - 1)
                lp = torch.log_softmax(logits[start:stop].float(), dim=-1)
                target = torch.tensor(ids[start + 1:stop + 1], device=lp.device)
                chosen = lp.gather(-1, target[:, None])[:, 0].tolist()
                if top_n > 0:
                    top_v, top_i = lp.topk(top_n, dim=-1)
                    tops = [list(zip(i, v)) for i, v in zip(top_i.tolist(), top_v.tolist())]
                else:
                    tops = [[] for _ in chosen]
                out.extend(zip(chosen, tops))
        return out


# ---------------------------------------------------------------- running

def run_server(checkpoint: str, *, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
               api_key_env: str = DEFAULT_API_KEY_ENV, max_tokens_cap: int | None = None,
               trust_remote_code: bool = False, log=print) -> None:
    """Check the key policy (before loading anything), load the checkpoint, serve until interrupted."""
    import uvicorn

    api_key = api_key_for(host, api_key_env)
    if max_tokens_cap is not None and max_tokens_cap < 1:
        raise ServeError(f"--max-tokens-cap {max_tokens_cap}: must be at least 1")
    loaded = load_checkpoint(checkpoint, trust_remote_code=trust_remote_code)
    name = model_name or Path(checkpoint.rstrip("/")).name or "model"
    app = create_app(Generator(loaded), model_name=name, api_key=api_key, max_tokens_cap=max_tokens_cap)
    log(startup_line(model_name=name, checkpoint=loaded.path, host=host, port=port, api_key_env=api_key_env,
                     key_required=api_key is not None))
    if not loaded.has_chat_template:
        log("rutune serve: this checkpoint has no chat template; /v1/chat/completions answers 400, "
            "/v1/completions works")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)


__all__ = ["Checkpoint", "DEFAULT_API_KEY_ENV", "Detokenizer", "GenerationFailed", "Generator", "Sampling",
           "ServeError", "Step", "api_key_for", "is_loopback", "load_checkpoint", "run_server", "startup_line"]
