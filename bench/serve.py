"""Server overhead: greedy generation through `rutune serve` (openai client, loopback) vs `model.generate` directly.

Uses the tiny model (or `--checkpoint`), in one process: uvicorn in a thread, the client in the main thread.
Prints tokens/s for direct `generate`, the non-streaming server, the streaming server (with time to the first
chunk), and the ruMMLU-style log-likelihood path (openai backend → /v1/completions echo) vs the hf backend.

    .venv/bin/python bench/serve.py [--tokens 256] [--repeats 3] [--checkpoint PATH]

The last line is `ratio: X` (server tokens/s ÷ direct tokens/s, non-streaming).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--checkpoint", default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import openai
    import torch
    import uvicorn

    from rutune.eval.backend_base import BackendConfig
    from rutune.data.templates import render
    from rutune.eval.backend_openai import OpenAIBackend
    from rutune.eval.backends import LoglikelihoodRequest, make_backend
    from rutune.serve import Generator, load_checkpoint
    from rutune.serve_app import create_app

    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    app = create_app(Generator(ckpt), model_name="bench")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    tok, model = ckpt.tokenizer, ckpt.model
    messages = [{"role": "user", "content": "Расскажи коротко, как приготовить борщ."}]
    ids = tok(render(tok, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    n = args.tokens

    def direct():
        """In a fresh thread, as the server generates: on a loaded CPU, OpenMP in the main thread can be ~10x slower
        for a model this small, which would flatter the server."""
        box = {}

        def work():
            with torch.inference_mode():
                out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            box["n"] = out.shape[1] - len(ids)

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        return box["n"]

    def served():
        r = client.chat.completions.create(model="bench", messages=messages, max_tokens=n, temperature=0)
        return r.usage.completion_tokens

    def streamed():
        t0, first, count = time.perf_counter(), None, 0
        for chunk in client.chat.completions.create(model="bench", messages=messages, max_tokens=n, temperature=0,
                                                    stream=True, stream_options={"include_usage": True}):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
            if chunk.usage:
                count = chunk.usage.completion_tokens
        return count, first

    def rate(fn):
        times, counts = [], []
        fn()  # warm-up
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            counts.append(fn())
            times.append(time.perf_counter() - t0)
        return statistics.median(c / t for c, t in zip(counts, times)), counts[-1]

    direct_tps, _ = rate(direct)
    served_tps, served_n = rate(served)
    streamed_runs = [streamed() for _ in range(args.repeats + 1)][1:]
    first_chunk_ms = statistics.median(f for _, f in streamed_runs if f is not None) * 1000
    print(f"direct model.generate : {direct_tps:8.1f} tokens/s ({n} tokens, greedy)")
    print(f"server, non-streaming : {served_tps:8.1f} tokens/s ({served_n} tokens; the tiny model may stop early)")
    print(f"server, streaming     : first chunk after {first_chunk_ms:.0f} ms (median of {args.repeats})")

    reqs = [LoglikelihoodRequest(f"Вопрос {i}: где кухня?\nA) тут\nB) там\nC) здесь\nD) нигде\nОтвет:", " " + x)
            for i in range(25) for x in "ABCD"]
    hf = make_backend(BackendConfig(), ckpt.path)
    remote = OpenAIBackend(url, "bench", concurrency=4)
    t0 = time.perf_counter()
    want = hf.loglikelihood(reqs)
    hf_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = remote.loglikelihood(reqs)
    remote_s = time.perf_counter() - t0
    worst = max(abs(g.logprob - w.logprob) for g, w in zip(got, want))
    print(f"log-likelihood, {len(reqs)} requests: hf backend {hf_s:.2f} s, openai backend → rutune serve "
          f"{remote_s:.2f} s, max |Δ logprob| {worst:.2e}")
    server.should_exit = True
    thread.join(timeout=10)
    print(f"ratio: {served_tps / direct_tps:.2f}")


if __name__ == "__main__":
    main()
