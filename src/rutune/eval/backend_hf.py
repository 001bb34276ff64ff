"""`hf` backend: transformers, batched, length-sorted, left-padded, greedy by default.

Batch size does not change results: rows are left-padded with explicit `position_ids` (so padding never
shifts a row's positions) and results return in request order.

Log-likelihood shares forwards. A request needs the model's logits at the positions that predict its
continuation tokens, i.e. one forward over `tokens[:-1]`. When several requests of the same context have
token sequences `tokens[:-1]` that are prefixes of one another (multiple-choice letters: equal when " A".." D"
are single tokens; a chain when a small vocabulary has " A" as one token but " B" as "Ġ"+"B"), one forward
over the longest serves them all. For ruMMLU that is one forward
per question. Only the last few positions' logits are computed (`logits_to_keep`), so the output layer costs
a few rows per question instead of the whole prompt. A batch of groups runs as one unpadded row with
per-sequence attention when the model allows it (`_use_packed_attention`), else left-padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rutune.eval.backend_base import (GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult,
                                  count_tokens, cut_at_stop, encode_pair, prompt_text, prompt_token_ids, resolve_model,
                                  split_pair)
from rutune.eval.errors import EvalError


TAIL_CHARS = 48  # context characters (at least) re-tokenised with each continuation (HFBackend._encode_pairs)


def load_model_and_tokenizer(model_path: str, *, dtype: str = "auto", device: str | None = None,
                             trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer; a missing folder or unreadable model is an EvalError.

    Weights load from safetensors only, and a checkpoint's own code runs only when the config allows it.
    """
    resolved = resolve_model(model_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:  # auto: exact fp32 on CPU, bf16 on an accelerator
        torch_dtype = torch.float32 if device == "cpu" else torch.bfloat16
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(f"model {model_path}: cannot load ({first})") from None
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, resolved


def _use_packed_attention(model) -> bool:
    """Switch an SDPA model to per-sequence attention so log-likelihood batches need no padding.

    A padded batch runs SDPA with an explicit mask (the slow math kernel) and spends work on pad tokens; one
    unpadded row with `cu_seq_lens` boundaries runs causal SDPA per sequence (measured 12% less CPU time on
    ruMMLU-shaped batches). flash-attention takes the same boundaries natively. Eager attention, or a model
    whose attention does not receive the extra kwargs, keeps the padded path.
    """
    from rutune.attention import PACKED_SDPA

    if not getattr(model, "_supports_attention_backend", False):
        return False
    current = model.config._attn_implementation or ""
    if current.startswith("flash_attention"):
        return True
    if current == "sdpa":
        model.set_attn_implementation(PACKED_SDPA)
        return True
    return current == PACKED_SDPA


@dataclass
class _Group:
    """Requests served by one forward over `tokens` (each request's input is a prefix of it)."""

    tokens: list[int]
    members: list[tuple[int, int, list[int]]]  # (request index, input length, continuation tokens)


class HFBackend:
    def __init__(self, model_path: str, *, batch_size: int = 8, apply_chat_template: bool = True,
                 max_length: int | None = None, dtype: str = "auto", device: str | None = None,
                 trust_remote_code: bool = False):
        self.model, self.tokenizer, self.model_path = load_model_and_tokenizer(
            model_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        self.device = self.model.device
        self.batch_size = batch_size
        self.apply_chat_template = apply_chat_template
        window = getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.max_length = max_length or int(window)
        self.n_forward_rows = 0  # sequences run through the model by loglikelihood (one per ruMMLU question)
        self.packed = _use_packed_attention(self.model)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)

    # ------------------------------------------------------------------ prompts
    def prompt_text(self, request: GenerationRequest) -> str:
        """The exact text the model sees for a generation request."""
        return prompt_text(self.tokenizer, request, self.apply_chat_template, self.model_path)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        return prompt_token_ids(self.tokenizer, request, self.apply_chat_template, self.model_path)

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.tokenizer, text)

    # ------------------------------------------------------------------ batching helpers
    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            if seq:
                ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    # ------------------------------------------------------------------ generate
    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        encoded = [self.prompt_ids(r) for r in requests]
        for i, ids in enumerate(encoded):
            if len(ids) >= self.max_length:
                raise EvalError(f"generation request {i}: prompt has {len(ids)} tokens, the model window is "
                                f"{self.max_length}")
        results: list[GenerationResult | None] = [None] * len(requests)
        # Longest first: memory trouble shows on the first batch; similar lengths share a batch (less padding).
        order = sorted(range(len(requests)), key=lambda i: (-len(encoded[i]), i))
        greedy = [i for i in order if requests[i].temperature <= 0]
        sampled = [i for i in order if requests[i].temperature > 0]
        for start in range(0, len(greedy), self.batch_size):
            self._generate_batch(greedy[start:start + self.batch_size], requests, encoded, results)
        for i in sampled:  # one at a time, seeded, so a sampled answer does not depend on its batch mates
            torch.manual_seed(i)
            self._generate_batch([i], requests, encoded, results)
        return results  # type: ignore[return-value]

    def _generate_batch(self, batch: list[int], requests, encoded, results) -> None:
        from transformers import GenerationConfig

        seqs = [encoded[i] for i in batch]
        ids, mask, _ = self._left_pad(seqs)
        budget = [min(requests[i].max_new_tokens, self.max_length - len(encoded[i])) for i in batch]
        temperature = requests[batch[0]].temperature
        config = GenerationConfig(max_new_tokens=max(budget), do_sample=temperature > 0,
                                  temperature=temperature if temperature > 0 else None,
                                  top_p=None, top_k=None,
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids)
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = out[:, ids.shape[1]:].tolist()
        for row, i in enumerate(batch):
            results[i] = self._finish(new[row][: budget[row]], requests[i], budget[row])

    def _finish(self, tokens: list[int], request: GenerationRequest, budget: int) -> GenerationResult:
        hit_eos = False
        for k, t in enumerate(tokens):
            if t in self.eos_ids:
                tokens, hit_eos = tokens[:k], True
                break
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text, hit_stop = cut_at_stop(text, request.stop)
        n_tokens = len(tokens)
        if hit_stop:  # count tokens up to the one that completed the stop string
            n_tokens = next(k for k in range(1, len(tokens) + 1)
                            if cut_at_stop(self.tokenizer.decode(tokens[:k], skip_special_tokens=True),
                                           request.stop)[1])
        finish = "stop" if (hit_eos or hit_stop or len(tokens) < budget) else "length"
        return GenerationResult(text=text, n_tokens=n_tokens, finish_reason=finish)

    # ------------------------------------------------------------------ log-likelihood
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return encode_pair(self.tokenizer, context, continuation)

    def _encode_pairs(self, requests: list[LoglikelihoodRequest]) -> list[tuple[list[int], list[int]]]:
        """`encode_pair` for many requests: the same tokens, at about one tokenisation of each context.

        A fast tokenizer with a pre-tokenizer (byte-level BPE: Qwen, Llama 3, the tiny model) splits text into
        pieces that are tokenised independently, so appending a continuation can only change the last
        pieces. Each context is tokenised once; each pair then re-tokenises only the context's tail (from the
        last space at least `TAIL_CHARS` characters before its end) plus the continuation. The split is
        checked per context: the tail alone must tokenise exactly as the end of the whole context's tokens. A
        context that fails the check, or a tokenizer without a pre-tokenizer, takes the plain path
        (context‖continuation tokenised as one string).
        """
        pairs = []
        for i, r in enumerate(requests):
            if not r.context.strip():
                raise EvalError(f"log-likelihood request {i}: empty context")
            pairs.append(split_pair(r.context, r.continuation))
        contexts = list(dict.fromkeys(c for c, _ in pairs))
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None or backend.pre_tokenizer is None:
            n_context = dict(zip(contexts, map(len, tok(contexts, add_special_tokens=False)["input_ids"])))
            wholes = tok([c + k for c, k in pairs], add_special_tokens=False)["input_ids"]
            return [(w[: n_context[c]], w[n_context[c]:]) for (c, _), w in zip(pairs, wholes)]
        # The Rust tokenizer directly, ids only: same tokens as `tok(...)`, without offsets or Python lists.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)

        def ids_of(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in encode(texts, add_special_tokens=False)]

        context_ids = dict(zip(contexts, ids_of(contexts)))
        cut = {c: c.rfind(" ", 0, len(c) - TAIL_CHARS) for c in contexts}  # -1: too short to split
        splittable = [c for c in contexts if cut[c] > 0]
        clean = {}  # context → number of its tokens kept as they are
        for c, tail in zip(splittable, ids_of([c[cut[c]:] for c in splittable])):
            ids = context_ids[c]
            if 0 < len(tail) < len(ids) and ids[len(ids) - len(tail):] == tail:
                clean[c] = len(ids) - len(tail)
        pieces = ids_of([c[cut[c]:] + k if c in clean else c + k for c, k in pairs])
        out = []
        for (c, _), piece in zip(pairs, pieces):
            n = len(context_ids[c])
            whole = context_ids[c][: clean[c]] + piece if c in clean else piece
            out.append((whole[:n], whole[n:]))
        return out

    def _groups(self, requests: list[LoglikelihoodRequest]) -> list[_Group]:
        by_context: dict[str, list[_Group]] = {}
        pending = []
        for i, (r, (ctx, cont)) in enumerate(zip(requests, self._encode_pairs(requests))):
            if not cont:
                raise EvalError(f"log-likelihood request {i}: empty continuation")
            inp = ctx + cont[:-1]
            if len(inp) > self.max_length:
                raise EvalError(f"log-likelihood request {i}: {len(inp)} tokens, the model window is "
                                f"{self.max_length} (use fewer shots or a longer max_length)")
            pending.append((i, inp, cont, r.context))
        pending.sort(key=lambda p: -len(p[1]))
        groups: list[_Group] = []
        for i, inp, cont, context in pending:
            candidates = by_context.setdefault(context, [])
            for g in candidates:
                if g.tokens[: len(inp)] == inp:
                    g.members.append((i, len(inp), cont))
                    break
            else:
                g = _Group(tokens=inp, members=[(i, len(inp), cont)])
                candidates.append(g)
                groups.append(g)
        return groups

    def _tail_logits(self, batch: list[_Group], firsts: list[int]) -> list[torch.Tensor]:
        """Logits at positions `first..len(tokens)-1` of each group's sequence, one (n, vocab) tensor per group."""
        seqs = [g.tokens for g in batch]
        if self.packed:
            # One unpadded row, attention per sequence (`cu_seq_lens`), positions restarting at each boundary.
            lengths = [len(s) for s in seqs]
            bounds = torch.tensor([0] + lengths).cumsum(0)
            keep = torch.cat([torch.arange(b + f, b + n) for b, f, n in zip(bounds.tolist(), firsts, lengths)])
            cu = bounds.to(torch.int32).to(self.device)
            ids = torch.tensor([[t for s in seqs for t in s]], device=self.device)
            positions = torch.cat([torch.arange(n) for n in lengths])[None].to(self.device)
            logits = self.model(input_ids=ids, position_ids=positions, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                max_length_q=max(lengths), max_length_k=max(lengths),
                                logits_to_keep=keep.to(self.device), use_cache=False).logits[0]
            return list(logits.split([n - f for f, n in zip(firsts, lengths)]))
        keep = max(len(s) - f for s, f in zip(seqs, firsts))
        ids, mask, positions = self._left_pad(seqs)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep,
                            use_cache=False).logits
        return [logits[row, keep - (len(s) - f):] for row, (s, f) in enumerate(zip(seqs, firsts))]

    @torch.inference_mode()
    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        groups = self._groups(requests)
        groups.sort(key=lambda g: -len(g.tokens))
        results: list[LoglikelihoodResult | None] = [None] * len(requests)
        for start in range(0, len(groups), self.batch_size):
            batch = groups[start:start + self.batch_size]
            # A member's continuation token k is predicted at position n_inp - len(cont) + k of its group.
            firsts = [min(n_inp - len(cont) for _, n_inp, cont in g.members) for g in batch]
            pieces = self._tail_logits(batch, firsts)
            self.n_forward_rows += len(batch)
            logprobs = torch.log_softmax(torch.cat(pieces).float(), dim=-1)
            rows, targets, spans, offset = [], [], [], 0
            for g, f, piece in zip(batch, firsts, pieces):
                for i, n_inp, cont in g.members:
                    first = offset + n_inp - len(cont) - f
                    spans.append((i, len(targets), len(cont)))
                    rows.extend(range(first, first + len(cont)))
                    targets.extend(cont)
                offset += piece.shape[0]
            rows_t = torch.tensor(rows, device=logprobs.device)
            targets_t = torch.tensor(targets, device=logprobs.device)
            picked = logprobs[rows_t, targets_t].tolist()
            hits = (logprobs.argmax(-1)[rows_t] == targets_t).tolist()
            for i, at, n in spans:
                results[i] = LoglikelihoodResult(logprob=sum(picked[at:at + n]), is_greedy=all(hits[at:at + n]))
        return results  # type: ignore[return-value]
