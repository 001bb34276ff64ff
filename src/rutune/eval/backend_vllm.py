"""`vllm` backend (extra): vLLM's offline engine for generation and prompt log-probs, imported lazily.

vLLM schedules the whole request list itself (continuous batching, prefix caching), so requests go in
one call. Prompts are rendered and tokenised with the model's own tokenizer exactly as in the `hf`
backend, then passed as token ids, so both backends see identical inputs.
Log-likelihood reads `prompt_logprobs` of context‖continuation (one request per pair, max_tokens 1).
"""

from __future__ import annotations

from rutune.eval.backend_base import (GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult,
                                  count_tokens, cut_at_stop, encode_pair, prompt_token_ids,
                                  resolve_model)
from rutune.eval.errors import EvalError


class VLLMBackend:
    def __init__(self, model_path: str, *, apply_chat_template: bool = True, max_length: int | None = None,
                 dtype: str = "auto", seed: int = 0, memory_utilization: float | None = None):
        try:
            import vllm

            vllm.LLM  # noqa: B018 - a folder named vllm on sys.path imports as an empty namespace package
        except (ImportError, AttributeError):
            raise EvalError("the vllm backend needs vLLM: `pip install 'rutune[vllm]'` in its own venv "
                            "(see `make test-vllm`)") from None
        resolved = resolve_model(model_path)
        kwargs: dict = {"max_model_len": max_length} if max_length else {}
        if memory_utilization is not None:  # on vLLM's CPU build this is the share of host RAM it reserves
            kwargs["gpu_memory_utilization"] = memory_utilization
        self.llm = vllm.LLM(model=resolved, dtype="float32" if dtype == "auto" else dtype, seed=seed,
                            enforce_eager=True, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_length = int(self.llm.llm_engine.model_config.max_model_len)
        self.apply_chat_template = apply_chat_template
        self.model_path = resolved
        self._vllm = vllm

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        return prompt_token_ids(self.tokenizer, request, self.apply_chat_template, self.model_path)

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.tokenizer, text)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        prompts, params = [], []
        for i, r in enumerate(requests):
            ids = self.prompt_ids(r)
            if len(ids) >= self.max_length:
                raise EvalError(f"generation request {i}: prompt has {len(ids)} tokens, the model window is "
                                f"{self.max_length}")
            prompts.append({"prompt_token_ids": ids})
            params.append(self._vllm.SamplingParams(
                temperature=r.temperature, max_tokens=min(r.max_new_tokens, self.max_length - len(ids)),
                stop=list(r.stop) or None, seed=i if r.temperature > 0 else None))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for r, out in zip(requests, outputs):
            completion = out.outputs[0]
            text, hit_stop = cut_at_stop(completion.text, r.stop)
            finish = "length" if completion.finish_reason == "length" and not hit_stop else "stop"
            results.append(GenerationResult(text=text, n_tokens=len(completion.token_ids), finish_reason=finish))
        return results

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        pairs = [encode_pair(self.tokenizer, r.context, r.continuation) for r in requests]
        prompts = [{"prompt_token_ids": ctx + cont} for ctx, cont in pairs]
        params = self._vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for (ctx, cont), out in zip(pairs, outputs):
            total, greedy = 0.0, True
            for pos, token in enumerate(cont, start=len(ctx)):
                entry = out.prompt_logprobs[pos][token]
                total += float(entry.logprob)
                greedy = greedy and entry.rank == 1
            results.append(LoglikelihoodResult(logprob=total, is_greedy=greedy))
        return results
