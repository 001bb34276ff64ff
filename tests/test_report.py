"""The report on hand-written run directories (tests/_report_runs.py): exact cells, CIs, where the paired tests put
their marks, valid/total counts, mixture and contamination sections, CSV round trip, labels, bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest

from rutune.results import display

from _report_runs import JUDGE_FIX, make_sweep, source, write_mmlu, write_prepare, write_stage
from rutune.stats import bootstrap_ci
from rutune.report import ReportError, build_report
from rutune.report.collect import read_run
from rutune.report.sections import contamination_lines, mixture_rows
from rutune.report.table import build_table

ROUNDS = 200
LABELS = ["base", "+ GM 60% + Saiga 20%", "+ GM 60% + Saiga 20% + Saiga Pref 100%", "+ GM 80% + Saiga 20%"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    runs = make_sweep(root)
    written = build_report(runs, root / "out", rounds=ROUNDS)
    table = build_table([read_run(r) for r in runs], rounds=ROUNDS)
    return {"runs": runs, "written": written, "table": table,
            "md": written["md"].read_text(encoding="utf-8")}


def md_rows(md: str) -> dict[str, list[str]]:
    """Results table rows of the Markdown report: label → cells."""
    section = md.split("## Results")[1].split("\n- ")[0]
    rows = {}
    for line in section.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


def test_rows_and_labels_follow_the_mixture_rule(sweep):
    assert [r.label for r in sweep["table"].rows] == LABELS
    assert [(r.experiment, r.model) for r in sweep["table"].rows] == [
        ("gm60", "base"), ("gm60", "sft"), ("gm60", "simpo"), ("gm80", "sft")]
    assert list(md_rows(sweep["md"])) == LABELS


def test_markdown_cells_exact(sweep):
    rows = md_rows(sweep["md"])
    header = sweep["md"].split("## Results")[1].strip().splitlines()[0]
    assert header == "| model | Judge | Judge (LC) | Avg len (model tokens) | ruMMLU | QA1 | QA2 |"
    lo, hi = bootstrap_ci(list(range(100, 120)), rounds=ROUNDS, seed=0)
    assert rows["base"] == ["0.500 [0.400, 0.600]", "0.500 [0.410, 0.590]", f"110 [{lo:.0f}, {hi:.0f}]",
                            "0.500 [0.430, 0.570]", "0.500 [0.330, 0.670]", "0.667 [0.500, 0.830]"]
    lo, hi = bootstrap_ci(list(range(200, 220)), rounds=ROUNDS, seed=0)
    # sft: wins every valid game (one invalid → 39/40), longer answers, far more ruMMLU right, QA2 far worse
    assert rows[LABELS[1]] == ["0.970 [0.900, 1.000] ▲ (39/40)", "0.900 [0.800, 0.970] (39/40)",
                               f"210 [{lo:.0f}, {hi:.0f}] ▲", "0.800 [0.740, 0.860] ▲", "0.500 [0.330, 0.670]",
                               "0.067 [0.000, 0.167] ▼"]
    # simpo: no judge; 5 more ruMMLU items right (p = 0.0625: no mark); 5 QA1 items failed
    assert rows[LABELS[2]][:2] == ["no judge configured", "no judge configured"]
    assert rows[LABELS[2]][3:] == ["0.525 [0.455, 0.595]", "0.500 [0.330, 0.670] (25/30)", "0.667 [0.500, 0.830]"]
    # gm80: only ruMMLU evaluated, 6 more right (p = 0.03125: marked)
    assert rows[LABELS[3]] == ["—", "—", "—", "0.530 [0.460, 0.600] ▲", "—", "—"]
    assert f"- Not available: {JUDGE_FIX}\n" in sweep["md"]


def test_paired_tests_by_hand(sweep):
    cells = {r.label: r.cells for r in sweep["table"].rows}
    sft, simpo, gm80 = cells[LABELS[1]], cells[LABELS[2]], cells[LABELS[3]]
    assert sft["mmlu.accuracy"].test == "mcnemar" and sft["mmlu.accuracy"].p_value == pytest.approx(2 * 0.5**60)
    assert simpo["mmlu.accuracy"].p_value == pytest.approx(0.0625) and simpo["mmlu.accuracy"].direction is None
    assert gm80["mmlu.accuracy"].p_value == pytest.approx(0.03125) and gm80["mmlu.accuracy"].direction == "higher"
    assert sft["babilong.qa2"].p_value == pytest.approx(2 * 0.5**18) and sft["babilong.qa2"].diff == pytest.approx(-18 / 30)
    assert sft["babilong.qa1"].p_value == 1.0 and sft["babilong.qa1"].n_pairs == 30
    assert simpo["babilong.qa1"].n_pairs == 25  # failed items are not paired
    # arena: 39 valid games; the base scores 0 on 20 of them (game 1 of each question) and 1 on 19
    assert sft["arena.win_rate"].test == "paired_bootstrap" and sft["arena.win_rate"].n_pairs == 39
    assert sft["arena.win_rate"].diff == pytest.approx(20 / 39) and sft["arena.win_rate"].p_value == 0.0
    assert sft["arena.avg_tokens"].diff == pytest.approx(100.0) and sft["arena.avg_tokens"].n_pairs == 20
    assert sft["arena.win_rate_lc"].p_value is None  # length-controlled score: CI only, never tested
    assert all(c.p_value is None for c in cells["base"].values())


def test_no_mark_when_the_difference_is_noise(tmp_path):
    """Same accuracy, many discordant items both ways: McNemar p = 1, no mark, even with 100 items changed."""
    run = tmp_path / "e"
    write_mmlu(run, "base", 100)
    items = [{"id": f"rummlu-{i}", "correct": int(100 <= i < 200)} for i in range(200)]
    write_mmlu(run, "other", 100)
    (run / "eval" / "mmlu" / "other" / "items.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    table = build_table([read_run(run)], rounds=ROUNDS)
    cell = table.rows[1].cells["mmlu.accuracy"]
    assert table.rows[1].label == "e/other"  # no train manifest: experiment/model
    assert (cell.p_value, cell.n_pairs, cell.direction) == (1.0, 200, None)


def test_mixture_table_numbers(sweep):
    rows = mixture_rows(read_run(sweep["runs"][0]))
    assert [(r.kind, r.source, r.requested, r.realised, r.realised_percent) for r in rows] == [
        ("sft", "grandmaster_pro_max", "60%", 600, 60.0), ("sft", "saiga_scored", "20%", 100, 20.0),
        ("preference", "saiga_preferences", "100%", 300, 100.0)]
    assert ("| sft | grandmaster_pro_max (GM) | 60% | 1000 | 600 | 60.0% | 1200 | 1100 | 100 | "
            "duplicate_exact 60, min_russian_share 40 |") in sweep["md"]
    assert "| sft | grandmaster_pro_max (GM) | 80% | 1000 | 800 | 80.0% | 1200 | 1100 | 100 | — |" in sweep["md"]


def test_realised_differs_from_requested(tmp_path):
    write_prepare(tmp_path / "r", "r", [source("saiga_scored", "250%", 333, 833, read=400, after=333)])
    (row,) = mixture_rows(read_run(tmp_path / "r"))
    assert row.realised_percent == pytest.approx(100 * 833 / 333)
    assert "| 250% | 333 | 833 | 250.2% |" in build_report([tmp_path / "r"], tmp_path / "o")["md"].read_text()


def test_contamination_lines(sweep):
    gm60, gm80 = (read_run(r) for r in sweep["runs"])
    assert contamination_lines(gm60) == ["arena: 2/50 items share a 13-gram; flagged ids: 7, 19",
                                         "rummlu: 0/40 items share a 13-gram"]
    assert contamination_lines(gm80) == []
    section = sweep["md"].split("## Contamination")[1]
    assert "- arena: 2/50 items share a 13-gram; flagged ids: 7, 19" in section
    assert "### gm80\n\nNot checked." in section


def _float(text: str) -> float | None:
    return float(text) if text != "" else None


def test_csv_parses_back_to_the_same_numbers(sweep):
    with open(sweep["written"]["csv"], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == LABELS
    compared = 0
    for row, trow in zip(rows, sweep["table"].rows):
        for key, cell in trow.cells.items():
            for name, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"),
                                 ("p_value", "_p_value"), ("diff", None)):
                if suffix is None:
                    continue
                expected, got = getattr(cell, name), _float(row[key + suffix])
                assert got == expected, (trow.label, key, name)
                compared += expected is not None
            n_valid = row[f"{key}_n_valid"]
            assert (int(n_valid) if n_valid else None) == cell.n_valid
    assert compared > 40
    base, sft = rows[0], rows[1]
    assert float(base["mmlu.accuracy"]) == 0.5 and float(sft["mmlu.accuracy_p_value"]) == pytest.approx(2 * 0.5**60)
    assert sft["babilong.qa2_direction"] == "lower" and sft["arena.win_rate_test"] == "paired_bootstrap"
    assert rows[2]["arena.win_rate_note"] == "no judge configured" and rows[3]["babilong.qa1"] == ""


def test_figures_written_for_markdown(sweep):
    names = sorted(k for k in sweep["written"] if k.startswith("plot:"))
    assert names == ["plot:hist_arena.avg_tokens", "plot:loss_curves", "plot:metrics_vs_mixture"]
    for key in names:
        assert sweep["written"][key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{key[5:]}.png)" in sweep["md"]


def test_missing_baseline_gives_no_marks(tmp_path):
    runs = make_sweep(tmp_path)
    table = build_table([read_run(r) for r in runs], baseline_label="nobody", rounds=ROUNDS)
    assert all(c.p_value is None for r in table.rows for c in r.cells.values())
    assert any("No results for the baseline `nobody`" in n for n in table.notes)


def test_identical_mixtures_fall_back_to_experiment_labels(tmp_path):
    for name in ("a", "b"):
        write_prepare(tmp_path / name, name, [source("grandmaster_pro_max", "100%", 10, 10, read=10, after=10)])
        write_stage(tmp_path / name, "sft", "sft", "base", [1.0])
        write_mmlu(tmp_path / name, "sft", 100)
    table = build_table([read_run(tmp_path / n) for n in ("a", "b")], rounds=ROUNDS)
    assert [r.label for r in table.rows] == ["a/sft", "b/sft"]


def test_bad_input_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(ReportError, match="no such run directory"):
        build_report([tmp_path / "missing"], tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="not a run directory"):
        build_report([tmp_path / "empty"], tmp_path / "o")
    run = tmp_path / "r"
    write_mmlu(run, "base", 10, n=20)
    results = run / "eval" / "mmlu" / "base" / "results.json"
    results.write_text('{"metrics": ', encoding="utf-8")
    with pytest.raises(ReportError) as e:
        build_report([run], tmp_path / "o")
    assert str(results) in str(e.value) and "\n" not in str(e.value)
    write_mmlu(run, "base", 10, n=20)
    items = run / "eval" / "mmlu" / "base" / "items.jsonl"
    lines = items.read_text().splitlines()
    items.write_text("\n".join(lines[:3] + ["{torn"] + lines[3:]) + "\n")
    with pytest.raises(ReportError, match=f"{items}: line 4 is not JSON"):
        build_report([run], tmp_path / "o")
    items.write_text("\n".join(lines) + '\n{"id": "rummlu-99", "corr')  # a torn last line is ignored
    assert build_report([run], tmp_path / "o", formats=("csv",))["csv"].exists()
    with pytest.raises(ReportError, match="unknown pdf"):
        build_report([run], tmp_path / "o", formats=("pdf",))
    with pytest.raises(ReportError, match="also"):
        build_report([run, run], tmp_path / "o")


def test_cli_report(tmp_path):
    from typer.testing import CliRunner

    from rutune.cli import app

    runs = make_sweep(tmp_path)
    res = CliRunner().invoke(app, ["report", *map(str, runs), "--out", str(tmp_path / "o"), "--rounds", "50"])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output and (tmp_path / "o" / "report.csv").exists()
    res = CliRunner().invoke(app, ["report", str(runs[1])])
    assert res.exit_code == 0 and (runs[1] / "report" / "report.md").exists()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such run directory" in res.output and "Traceback" not in res.output


def test_a_column_appears_only_when_some_result_displays_it(tmp_path, sweep):
    """Columns come from the result files' display blocks: a metric with `display` is a column (placed by its
    order, tested by its test kind, on the items its key names); a metric without one is not."""
    assert "Held-out NLL" not in sweep["md"]
    run = tmp_path / "e"
    for model, shift in (("base", 0.0), ("sft", -0.5)):
        write_mmlu(run, model, 10, n=20)
        folder = run / "eval" / "nll" / model
        folder.mkdir(parents=True)
        values = [2.0 + 0.01 * i + shift for i in range(50)]
        (folder / "items.jsonl").write_text("".join(json.dumps({"id": f"h{i}", "nll": v}) + "\n"
                                                    for i, v in enumerate(values)), encoding="utf-8")
        (folder / "results.json").write_text(json.dumps({"suite": "nll", "model": model, "metrics": {
            "mean_nll": {"value": sum(values) / 50, "ci_low": None, "ci_high": None, "n_valid": 50, "n_total": 50,
                         "item_key": "nll", "display": display("Held-out NLL", direction="lower", order=42,
                                                               test="paired_bootstrap", item_key="nll")},
            "hidden": {"value": 1.0, "n_valid": 50, "n_total": 50}}}), encoding="utf-8")
    table = build_table([read_run(run)], rounds=ROUNDS)
    assert [c.key for c in table.columns] == ["mmlu.accuracy", "nll.mean_nll"]
    cell = table.rows[1].cells["nll.mean_nll"]
    assert cell.value == pytest.approx(2.245 - 0.5) and cell.test == "paired_bootstrap"
    assert cell.diff == pytest.approx(-0.5) and cell.direction == "lower" and cell.n_pairs == 50


def test_mcnemar_on_thousands_of_discordant_items():
    """ruMMLU-sized tables (thousands of discordant items) must not overflow; exact p vs the normal approximation."""
    from rutune.report.table import paired_test

    model = {f"m{i}": float(i < 3100) for i in range(6000)}
    base = {f"m{i}": float(i >= 3100) for i in range(6000)}
    res = paired_test(model, base, accuracy=True, rounds=ROUNDS, seed=0)
    z = 200 / 6000**0.5  # (3100 − 2900)/√6000 = 2.582 → two-sided normal p ≈ 0.0098
    assert res["test"] == "mcnemar" and res["n_pairs"] == 6000
    assert res["p_value"] == pytest.approx(math.erfc(z / 2**0.5), rel=0.06)
