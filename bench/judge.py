"""Judge throughput: 1000 judgments against a local OpenAI-compatible server with fixed latency.

The server (tests/judge_server.py) runs in its own process and answers every request after `--latency-ms`
(100 ms). With `--concurrency` 32 the best possible rate is 32 / 0.1 s = 320 judgments/s; the bench prints the
measured rate as a fraction of that bound. Goal: ≥ 0.9. The cache is flushed per record and fsynced at most
once a second (`items.AppendLog`); the one-off `import openai` and first client are done before the timed run.

    .venv/bin/python bench/judge.py [--n 1000] [--concurrency 32] [--latency-ms 100] [--fsync-each] [--httpx]

The last line is `ratio: X`.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_server(latency_s: float, workdir: Path) -> tuple[subprocess.Popen, str]:
    port_file = workdir / "url"
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "judge_server.py"), str(port_file), str(latency_s)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().startswith("http"):
            return proc, port_file.read_text().strip()
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("judge server did not start")


def _cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process (Linux /proc; 0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="judgments (games)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--fsync-each", action="store_true",
                    help="A/B baseline: fsync the cache after every record (the behaviour before batching)")
    ap.add_argument("--httpx", action="store_true",
                    help="A/B baseline: the client's default httpx transport instead of aiohttp (the behaviour before)")
    args = ap.parse_args()

    from rutune.eval.judge import JudgeProfile, load_prompt
    from rutune.eval import judge_client
    from rutune.eval.judge_client import Game, count_statuses, judge_games

    if args.fsync_each:
        import functools

        from rutune.items import AppendLog

        judge_client.AppendLog = functools.partial(AppendLog, sync_every=1)

    if args.httpx:
        def httpx_client(profile):
            import openai

            return openai.AsyncOpenAI(base_url=profile.base_url, api_key=profile.api_key(),
                                      timeout=profile.timeout_s, max_retries=0)

        judge_client.make_client = httpx_client

    # `openai` is imported lazily by the first judging run, and the first client it builds imports its HTTP
    # transport; that one-off process start-up (0.3–1.5 s on a busy machine) is not throughput, so it is paid here,
    # outside the timed run (one client built and closed, as `judge_games` builds it), and printed on its own
    t_import = time.perf_counter()
    from rutune.eval.backends import run_sync

    async def warm_up() -> None:
        await judge_client.make_client(JudgeProfile(base_url="http://127.0.0.1:9/v1", model="warm-up")).close()

    run_sync(warm_up())
    import_s = time.perf_counter() - t_import

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, url = start_server(args.latency_ms / 1000, workdir)
        try:
            games = [Game(str(i // 2), 1 + i % 2, f"Вопрос номер {i // 2}: как дела?", f"Ответ A {i}",
                          f"Ответ B {i}") for i in range(args.n)]
            profile = JudgeProfile(base_url=url, model="bench-judge", concurrency=args.concurrency, timeout_s=30)
            prompt = load_prompt()
            server_cpu0 = _cpu_s(proc.pid)
            t0, cpu0 = time.perf_counter(), time.process_time()
            records = judge_games(games, profile, prompt, workdir / "judgments.jsonl")
            elapsed, client_cpu = time.perf_counter() - t0, time.process_time() - cpu0
            server_cpu = _cpu_s(proc.pid) - server_cpu0
            t1 = time.perf_counter()
            judge_games(games, profile, prompt, workdir / "judgments.jsonl")  # all cached: zero calls
            cached_s = time.perf_counter() - t1
        finally:
            proc.kill()
            proc.wait()
    bound = args.concurrency / (args.latency_ms / 1000)
    rate = len(records) / elapsed
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"judgments: {len(records)}  statuses: {count_statuses(records)}")
    print(f"elapsed: {elapsed:.2f} s  throughput: {rate:.1f}/s  bound: {bound:.0f}/s "
          f"(concurrency {args.concurrency}, latency {args.latency_ms:.0f} ms)")
    print(f"client CPU per judgment: {client_cpu / len(records) * 1000:.2f} ms (one free core sustains "
          f"{len(records) / client_cpu:.0f}/s); server CPU: {server_cpu:.2f} s; load average: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"rerun from cache: {cached_s:.2f} s  (import openai + first client before the timed run: {import_s:.2f} s)")
    print(f"peak RSS (client process): {peak_rss_mib:.0f} MiB")
    mode = "after every record (--fsync-each)" if args.fsync_each else "batched (≤ 1 s apart, and at the end)"
    print(f"fsync: {mode}; transport: {'httpx (--httpx)' if args.httpx else 'aiohttp'}")
    print(f"ratio: {rate / bound:.3f}")


if __name__ == "__main__":
    main()
