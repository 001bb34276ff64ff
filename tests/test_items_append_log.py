"""`items.AppendLog`: every append is in the OS at once (another reader sees it, so a kill loses nothing), while
fsync runs only when the interval or the row count is reached and at close; the judge cache uses it."""

from __future__ import annotations

import sys
from pathlib import Path

from rutune import items
from rutune.items import AppendLog, read_items


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def counting_fsync(monkeypatch) -> list[int]:
    calls = []
    real = items.os.fsync
    monkeypatch.setattr(items.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    return calls


def test_appends_are_visible_at_once_and_fsync_waits_for_the_interval(tmp_path, monkeypatch):
    fsyncs = counting_fsync(monkeypatch)
    clock = Clock()
    path = tmp_path / "log.jsonl"
    log = AppendLog(path, sync_interval_s=1.0, sync_every=100, clock=clock)
    for i in range(3):
        log.append([{"id": i}])
        assert [r["id"] for r in read_items(path)] == list(range(i + 1))  # flushed: a second reader sees it
    assert fsyncs == [] and log.syncs == 0
    clock.t = 0.99
    log.append([{"id": 3}])
    assert fsyncs == []
    clock.t = 1.0  # one interval after the log opened: this append syncs all four rows
    log.append([{"id": 4}])
    assert log.syncs == 1 and len(fsyncs) == 1
    clock.t = 1.5
    log.append([{"id": 5}])
    log.close()  # the rest is synced at close, and closing twice is harmless
    log.close()
    assert log.syncs == 2 and [r["id"] for r in read_items(path)] == list(range(6))


def test_fsync_every_n_rows_and_no_empty_syncs(tmp_path, monkeypatch):
    fsyncs = counting_fsync(monkeypatch)
    with AppendLog(tmp_path / "log.jsonl", sync_interval_s=3600, sync_every=4, clock=Clock()) as log:
        for i in range(9):
            log.append([{"id": i}])
        assert log.syncs == 2  # after rows 4 and 8
        log.append([])
        log.sync()
        log.sync()  # nothing pending after the first: no second fsync
    assert log.syncs == 3 and len(fsyncs) == 3


def test_judging_fsyncs_the_cache_far_less_than_once_per_record(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from judge_server import JudgeServer

    from rutune.eval.judge import JudgeProfile, load_prompt
    from rutune.eval.judge_client import Game, judge_games, load_cache

    fsyncs = counting_fsync(monkeypatch)
    games = [Game(str(i // 2), 1 + i % 2, f"Вопрос {i // 2}?", f"A {i}", f"B {i}") for i in range(60)]
    cache = tmp_path / "judgments.jsonl"
    with JudgeServer(lambda body: "[[A>B]]") as server:
        prof = JudgeProfile(base_url=server.base_url, model="j", concurrency=8)
        records = judge_games(games, prof, load_prompt(), cache)
        n_calls = len(server.calls)
        again = judge_games(games, prof, load_prompt(), cache)
        assert len(server.calls) == n_calls  # a rerun makes zero calls
    assert len(records) == 60 and all(r["status"] == "ok" for r in records) and again == records
    assert len(load_cache(cache)) == 60
    assert 1 <= len(fsyncs) <= 10  # at close, plus at most one per second of judging (not 60)
