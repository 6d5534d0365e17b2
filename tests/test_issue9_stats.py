"""Honest statistics and comparisons (issue 9, items 11-15): Student's t intervals, zero-shot computed once,
the zero-shot split, published few-shot numbers and plots with several models."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t as student_t
from test_report_extras import record as report_record

from odinw_bench.report import formats, grid

SEEDS = (3, 30, 300)


def record(task, regime, shots, seed, ap, *, model="glip-t", **changes):
    """A valid hand-written record (``test_report_extras.record``), of glip-t by default."""
    return report_record(task, regime, shots, seed, ap, model=model, **changes)


# ---- Item 11: Student's t confidence intervals ----


def test_ci95_uses_students_t_with_n_minus_1_degrees_of_freedom(tmp_path):
    values = (0.30, 0.33, 0.39)  # AP points 30, 33, 39
    rep = grid.build_report([record("alpha", "full", 1, s, v) for s, v in zip(SEEDS, values)], tasks=["alpha"])
    cell = rep.cells[(("glip-t", "full", "1"), "alpha")]
    points = [v * 100 for v in values]
    mean = sum(points) / 3
    std = math.sqrt(sum((p - mean) ** 2 for p in points) / 2)
    expected = float(student_t.ppf(0.975, 2)) * std / math.sqrt(3)
    assert cell.std == pytest.approx(std)
    assert cell.ci95 == pytest.approx(expected)
    assert cell.ci95 > 2 * 1.96 * std / math.sqrt(3)  # the normal approximation was 2.2x too narrow
    assert rep.suite_stats[("glip-t", "full", "1")]["ci95"] == pytest.approx(expected)  # one task: same interval

    text = formats.format_table(rep)
    assert "Student's t" in text and "n-1 degrees of freedom" in text and "1.96" not in text
    written = formats.write_report(rep, tmp_path / "board")
    for key in ("markdown", "latex"):
        footer = written[key].read_text().rstrip().splitlines()[-6:]
        assert any("Student's t" in line for line in footer), key


# ---- Item 12: zero-shot is one result, not one per seed ----

ZERO = ("glip-t", "zero-shot", "0")
FULL = ("glip-t", "full", "1")


def _full_and_zero_shot(zero_shot_records):
    full = [record(t, "full", 1, s, 0.5) for t in ("alpha", "beta") for s in SEEDS]
    return full + zero_shot_records


def test_zero_shot_row_has_one_run_per_task_and_reads_without_plus_minus():
    records = _full_and_zero_shot([record("alpha", "zero-shot", 0, 3, 0.20, run_id="zs-alpha"),
                                   record("beta", "zero-shot", 0, 3, 0.40, run_id="zs-beta")])  # fmt: skip
    rep = grid.build_report(records, tasks=["alpha", "beta"], suite="duo", seeds=list(SEEDS))
    assert not rep.problems  # one zero-shot record is complete, though the other rows have 3 seeds
    cell = rep.cells[(ZERO, "alpha")]
    assert cell.status == "ok" and cell.mean == pytest.approx(20.0) and math.isnan(cell.std)
    assert math.isnan(rep.suite_stats[ZERO]["std"]) and rep.suite_stats[ZERO]["mean"] == pytest.approx(30.0)
    _, body = formats.display_rows(rep)
    zero_row = next(r for r in body if r[1] == "zero-shot")
    assert zero_row[3:] == ["20.0", "40.0", "30.0"] and not any("±" in c for c in zero_row)
    assert any("±" in c for c in next(r for r in body if r[1] == "full")[3:])
    assert "zero-shot rows: one evaluation" in formats.format_table(rep)


def test_older_per_seed_zero_shot_records_still_read_as_one_result():
    # Older harness versions ran zero-shot once per seed (three run ids); a newer run adds a seedless one under
    # seed 3, and one run may be recorded under two seeds. None of this is refused, and none shows a fake ± 0.0.
    older = [record(t, "zero-shot", 0, s, ap) for t, ap in (("alpha", 0.2), ("beta", 0.4)) for s in SEEDS]
    newer = [record("alpha", "zero-shot", 0, s, 0.2, run_id="zs-new") for s in (3, 30)]
    rep = grid.build_report(_full_and_zero_shot(older + newer), tasks=["alpha", "beta"])
    cell = rep.cells[(ZERO, "alpha")]
    assert cell.mean == pytest.approx(20.0) and math.isnan(cell.std) and math.isnan(cell.ci95)
    assert sorted(cell.run_ids) == sorted(["zs-new", *(f"glip-t-alpha-zero-shot-k0-s{s}-test" for s in SEEDS)])
    assert not rep.problems and not any("differ" in n for n in rep.notes)
    assert formats.display_rows(rep)[1][0][3] == "20.0"


def test_zero_shot_runs_that_disagree_are_averaged_and_named_in_the_notes():
    records = [record("alpha", "zero-shot", 0, s, ap) for s, ap in zip(SEEDS, (0.20, 0.20, 0.23))]
    rep = grid.build_report(records, tasks=["alpha"])
    assert rep.cells[(ZERO, "alpha")].mean == pytest.approx(21.0)
    (note,) = [n for n in rep.notes if "differ" in n]
    assert "glip-t zero-shot 0-shot | alpha" in note and "3.00 AP points" in note


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from odinw_bench.data.synthetic import ensure_demo_data

    root = tmp_path_factory.mktemp("data")
    ensure_demo_data(root)
    return root


def _plan(out, data_root, *extra):
    from odinw_bench.cli import build_parser
    from odinw_bench.commands.sweep import grid_spec
    from odinw_bench.runs.sweep import plan_sweep

    argv = ["sweep", "--models", "glip-micro", "--data-root", str(data_root), "--output", str(out), "--tasks",
            "demo", *extra]  # fmt: skip
    return plan_sweep(grid_spec(build_parser().parse_args(argv)))


def test_sweep_plans_one_zero_shot_cell_whatever_the_seeds(tmp_path, data_root):
    from odinw_bench.results.records import make_record, write_record
    from odinw_bench.runs.sweep import classify

    cells = _plan(tmp_path, data_root, "--shots", "0,1", "--seeds", "3,30,300", "--regimes", "full")
    zero = [c for c in cells if c.regime == "zero-shot"]
    assert len(zero) == 1 and zero[0].seed == 3
    assert sorted(c.seed for c in cells if c.regime == "full") == [3, 30, 300]
    # The zero-shot run id does not depend on the seed: planning with other seeds names the same run ...
    (other,) = [c for c in _plan(tmp_path, data_root, "--shots", "0", "--seeds", "30")]
    assert other.run_id == zero[0].run_id and other.seed == 30
    # ... so a zero-shot record written under seed 30 makes the seed-3 cell done: it is not run again.
    sample = {"sampler": "none", "train_ids": [], "train_ids_hash": None, "train_count": 0, "val_ids": None,
              "val_ids_hash": None, "val_count": None, "shortfall": {}}  # fmt: skip
    rec = make_record(run_id=other.run_id, task={"name": "demo", "version": 1, "sha256": None, "display_name": "D"},
                      split="val", prompt={"variant": "default", "captions": []}, shots=0, seed=30,
                      regime="zero-shot", sample=sample, model={"name": "glip-micro", "checkpoint": None,
                      "checkpoint_sha256": None}, config={}, metrics={"AP": 0.1})  # fmt: skip
    write_record(other.record_path, rec)
    classify(cells)
    assert zero[0].state == "done" and not zero[0].record_path.exists()
    assert {c.state for c in cells if c.regime == "full"} == {"left"}
    # Training runs keep one id per seed.
    full_ids = {c.run_id for c in cells if c.regime == "full"}
    assert len(full_ids) == 3


# ---- Item 13: zero-shot runs score the task's zero_shot_split unless --split says otherwise ----


def _split_of(data_root, *argv):
    from odinw_bench.runs.arguments import parse_run_args
    from odinw_bench.runs.request import requests_from_args

    args = parse_run_args(["--model", "glip-micro", "--data-root", str(data_root), *argv])
    return {req.split for req in requests_from_args(args)}


def test_zero_shot_split_comes_from_the_task_and_split_overrides_it(tmp_path, data_root):
    from pathlib import Path

    assert _split_of(data_root, "--task", "demo", "--shots", "0") == {"val"}  # demo.yaml: zero_shot_split: val
    assert _split_of(data_root, "--task", "demo", "--shots", "0", "--split", "test") == {"test"}
    assert _split_of(data_root, "--task", "demo", "--shots", "1") == {"test"}  # fine-tuning reports test_split
    assert _split_of(data_root, "--task", "demo", "--shots", "1", "--split", "val") == {"val"}
    # The field is read, not a fixed 'val': a task whose zero_shot_split is its train split scores train.
    text = (Path(__file__).parents[1] / "tasks" / "demo.yaml").read_text()
    assert "zero_shot_split: val" in text
    custom = tmp_path / "demo_zs.yaml"
    custom.write_text(text.replace("name: demo", "name: demo_zs").replace("zero_shot_split: val",
                                                                          "zero_shot_split: train"))
    assert _split_of(data_root, "--task", str(custom), "--shots", "0") == {"train"}



# ---- Item 14: the GLIP paper's few-shot numbers, and the comparison of every regime and shot count ----

PAPER_FILE = "glip_paper_odinw13.csv"
PAPER_MODELS = ("GLIP-T(A)", "GLIP-T(B)", "GLIP-T(C)", "GLIP-T", "GLIP-L")
TRAINED = ("full", "prompt", "linear-probe")
SHOT_COUNTS = ("1", "3", "5", "10", "all")


def _odinw13():
    from odinw_bench.tasks.registry import load_suites

    return list(load_suites()["odinw13"].tasks)


def _paper():
    from odinw_bench.report import published

    return [r for r in published.load_references() if r.file == PAPER_FILE]


def test_paper_tables_are_complete_and_their_averages_match_their_per_dataset_values():
    refs, tasks = _paper(), _odinw13()
    by_key = {}
    for ref in refs:
        key = (ref.model, ref.task, ref.regime, ref.shots)
        assert key not in by_key, key
        by_key[key] = ref
    # Averages: zero-shot (Table 14) and the 3 regimes x 5 shot counts (Tables 11-13) for every GLIP model.
    for model in PAPER_MODELS:
        assert (model, "odinw13", "zero-shot", "0") in by_key
        assert all((model, "odinw13", r, s) in by_key for r in TRAINED for s in SHOT_COUNTS)
    # Per dataset: zero-shot for every model (Table 14); every regime and shot count for GLIP-T, GLIP-L (Table 15).
    groups = {(m, "zero-shot", "0") for m in PAPER_MODELS}
    groups |= {(m, r, s) for m in ("GLIP-T", "GLIP-L") for r in TRAINED for s in SHOT_COUNTS}
    for model, regime, shots in groups:
        values = [by_key[(model, t, regime, shots)].ap * 100 for t in tasks]
        average = by_key[(model, "odinw13", regime, shots)].ap * 100
        # The paper rounds to 0.1: its average and the mean of 13 rounded values each err by at most 0.05.
        assert abs(sum(values) / len(values) - average) <= 0.1 + 1e-9, (model, regime, shots)
    assert len(refs) == len(by_key) == 5 * 14 + 5 * 3 * 5 + 2 * 3 * 5 * 13
    # The paper's std over 3 seeds is there for 1-10 shots, and absent for zero-shot and full data.
    assert all(math.isnan(r.std) == (r.shots in ("0", "all")) for r in refs)
    # Spot checks against the paper's tables (docs/published_numbers.md section 1).
    assert (by_key[("GLIP-T", "odinw13", "full", "1")].ap, by_key[("GLIP-T", "odinw13", "full", "1")].std) == (
        pytest.approx(0.511), pytest.approx(0.001))  # Table 11: 51.1 ± 0.1
    assert by_key[("GLIP-L", "odinw13", "prompt", "all")].ap == pytest.approx(0.679)  # Table 13: 67.9
    assert by_key[("GLIP-T(B)", "odinw13", "linear-probe", "5")].ap == pytest.approx(0.440)  # Table 12: 44.0 ± 0.2
    assert by_key[("GLIP-T", "egohands", "zero-shot", "0")].ap == pytest.approx(0.500)  # Table 14: 50.0
    mushrooms = by_key[("GLIP-L", "north_america_mushrooms", "full", "1")]  # Table 15: 69.8 ± 18.0
    assert (mushrooms.ap, mushrooms.std) == (pytest.approx(0.698), pytest.approx(0.180))


def test_paper_references_state_their_protocol():
    from odinw_bench.report import published

    refs, flags = _paper(), published.load_protocol_flags()
    assert {r.regime for r in refs} == {"zero-shot", "full", "prompt", "linear-probe"}
    assert all(code in flags for r in refs for code in r.protocol)
    assert all("manual_prompts" in r.protocol and r.prompt == "glip_manual" for r in refs)
    assert all(("at_least_x_per_category" in r.protocol) == (r.shots not in ("0", "all")) for r in refs)
    assert all("pascal_voc_on_val" in r.protocol for r in refs if r.task in ("pascal_voc", "odinw13"))
    assert all(("paper_glip_t_is_cap4m" in r.protocol) == (r.model == "GLIP-T") for r in refs)
    # Fine-tuned numbers are test AP; zero-shot ones are on GLIP's zero-shot split (val, minival for two tasks).
    assert {r.split for r in refs if r.regime != "zero-shot"} == {"test"}
    zero = {r.task: r.split for r in refs if r.regime == "zero-shot"}
    assert zero["egohands"] == zero["vehicles"] == "minival" and zero["aquarium"] == "val"
    assert zero["odinw13"] == "minival+val"


def _odinw13_records(regime, shots, seeds, ap, *, model="glip-t"):
    from odinw_bench.tasks.registry import load_task

    out = []
    for task in _odinw13():
        split = load_task(task).zero_shot_split if regime == "zero-shot" else "test"
        out += [record(task, regime, shots, s, ap, model=model, split=split) for s in seeds]
    return out


def test_compare_covers_every_regime_and_shot_count_with_protocol_flags():
    from odinw_bench.report import build, published

    records = _odinw13_records("zero-shot", 0, (3,), 0.40) + _odinw13_records("full", 1, SEEDS, 0.50)
    records += _odinw13_records("prompt", 5, SEEDS, 0.55) + _odinw13_records("linear-probe", "all", SEEDS, 0.60)
    rep = grid.build_report(records, tasks=_odinw13(), suite="odinw13")
    frame = published.compare(rep, published.load_references())
    paper = frame[frame["source"].str.startswith("GLIP paper")]
    # 13 tasks + the average, for each of our 4 rows.
    counts = paper.groupby(["regime", "shots"]).size().to_dict()
    assert counts == {("full", "1"): 14, ("linear-probe", "all"): 14, ("prompt", "5"): 14, ("zero-shot", "0"): 14}
    refs = {(r.task, r.regime, r.shots): r for r in _paper() if r.model == "GLIP-T"}
    for _, line in paper.iterrows():
        task = next((t for t in _odinw13() if rep.display[t] == line["column"]), "odinw13")
        ref = refs[(task, line["regime"], line["shots"])]
        assert line["reference"] == pytest.approx(ref.ap * 100) and line["ref_model"] == "GLIP-T"
        assert line["delta"] == pytest.approx(line["ours"] - ref.ap * 100)
        assert line["protocol"] == ";".join(ref.protocol)
        # Same split as the paper everywhere (zero-shot on val/minival, the others on test); its prompts differ.
        assert line["check"] == "prompt differs (ours default, reference glip_manual)"
    suite_full = paper[(paper["regime"] == "full") & (paper["column"] == "odinw13")].iloc[0]
    assert suite_full["reference_std"] == pytest.approx(refs[("odinw13", "full", "1")].std * 100)
    assert math.isnan(paper[paper["regime"] == "zero-shot"].iloc[0]["ours_std"])

    text = build.comparison_text(frame)
    flags = published.load_protocol_flags()
    for code in ("manual_prompts", "at_least_x_per_category", "pascal_voc_on_val", "paper_glip_t_is_cap4m"):
        assert flags[code] in text
    full_line = next(line for line in text.splitlines() if line.startswith("glip-t") and " full " in line
                     and " odinw13 " in line and "GLIP paper" not in line)  # fmt: skip
    assert "51.1 ± 0.1" in full_line and "-1.1" in full_line  # ours 50.0 vs Table 11's 51.1 ± 0.1
    md = build.comparison_text(frame, "md")
    assert "| glip-t | prompt | 5 |" in md and "(a) " in md


@pytest.mark.parametrize(("row", "field"), [
    ("GLIP-T,pothole,fine-tune,1,0.3,,test,x,src,,", "row 1.regime"),
    ("GLIP-T,pothole,full,0,0.3,,test,x,src,,", "row 1.shots"),
    ("GLIP-T,pothole,zero-shot,5,0.3,,val,x,src,,", "row 1.shots"),
    ("GLIP-T,pothole,full,1,0.3,1.5,test,x,src,,", "row 1.std"),
])  # fmt: skip
def test_bad_regime_shots_or_std_in_a_reference_file_names_the_field(tmp_path, row, field):
    from odinw_bench.errors import UserError
    from odinw_bench.report import published

    path = tmp_path / "refs.csv"
    path.write_text("model,task,regime,shots,AP,std,split,prompt,source,protocol,note\n" + row + "\n")
    with pytest.raises(UserError) as info:
        published.load_references([path])
    assert info.value.field == field and "refs.csv" in str(info.value)


# ---- Item 15: plots with several models ----


def _two_models_report():
    records = []
    for model in ("glip-t", "glip-l"):
        for task, base in (("alpha", 0.0), ("beta", 0.2)):
            records.append(record(task, "zero-shot", 0, 3, base + 0.1, model=model))
            for regime, shots, values in (("prompt", 1, (0.0, 0.01, 0.08)), ("full", 1, (0.1, 0.2, 0.3)),
                                          ("prompt", 5, (0.3, 0.3, 0.4)), ("full", 5, (0.4, 0.5, 0.5))):
                records += [record(task, regime, shots, s, base + v, model=model) for s, v in zip(SEEDS, values)]
    return grid.build_report(records, tasks=["alpha", "beta"], suite="duo")


def _by_label(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_plot_colours_are_regimes_styles_are_models_and_zero_shot_is_a_level():
    from matplotlib.colors import to_hex

    from odinw_bench.report.plots import efficiency_data, suite_figure, tasks_figure

    rep = _two_models_report()
    data = efficiency_data(rep)
    assert data.x == ["1", "5"]
    fig = suite_figure(data, "duo")
    (ax,) = fig.axes
    lines = _by_label(ax)
    assert set(lines) == {f"{m} {r}" for m in ("glip-t", "glip-l") for r in ("zero-shot", "prompt", "full")}

    def colour(label):
        return to_hex(lines[label].get_color())

    def style(label):
        return lines[label].get_linestyle(), lines[label].get_marker()

    for regime in ("zero-shot", "prompt", "full"):  # one colour per regime, whatever the model
        assert colour(f"glip-t {regime}") == colour(f"glip-l {regime}")
    assert len({colour(f"glip-t {r}") for r in ("zero-shot", "prompt", "full")}) == 3
    for model in ("glip-t", "glip-l"):  # one line style and marker per model, whatever the regime
        assert style(f"{model} prompt") == style(f"{model} full")
        assert lines[f"{model} zero-shot"].get_linestyle() == lines[f"{model} full"].get_linestyle()
    assert style("glip-t full") != style("glip-l full")

    # Zero-shot: a horizontal line across the whole shot axis at the zero-shot suite mean.
    for model in ("glip-t", "glip-l"):
        level = lines[f"{model} zero-shot"]
        assert list(level.get_xdata()) == [0, 1] and level.get_transform() == ax.get_yaxis_transform()
        assert list(level.get_ydata()) == pytest.approx([rep.suite_stats[(model, "zero-shot", "0")]["mean"]] * 2)
    assert ax.get_ylim()[0] == 0
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    # Regimes by colour, then models by style (in table order), not every combination.
    assert legend == ["zero-shot (reference line)", "prompt", "full", "glip-l", "glip-t"]

    tasks = tasks_figure(data, "duo")
    panels = [a for a in tasks.axes if a.get_visible()]
    assert [a.get_title() for a in panels] == ["Alpha", "Beta"]
    # Alpha, prompt 1-shot: AP 0, 1, 8 -> mean 3 ± 4.4: its band would dip below 0; the axis does not.
    alpha = rep.cells[(("glip-t", "prompt", "1"), "alpha")]
    assert alpha.mean < alpha.std
    for panel in panels:
        assert panel.get_ylim()[0] == 0
        levels = [ln for ln in panel.get_lines() if ln.get_transform() == panel.get_yaxis_transform()]
        assert len(levels) == 2
    assert [t.get_text() for t in tasks.legends[0].get_texts()] == legend


def test_zero_shot_run_with_several_seeds_is_one_request(tmp_path):
    """``run --shots 0 --seed 3 30 300`` evaluates once: the three results would be identical."""
    from odinw_bench.runs.arguments import parse_run_args
    from odinw_bench.runs.request import requests_from_args

    common = ["--task", "demo", "--model", "glip-micro", "--data-root", str(tmp_path), "--seed", "3", "30", "300"]
    assert [r.seed for r in requests_from_args(parse_run_args([*common, "--shots", "0"]))] == [3]
    assert [r.seed for r in requests_from_args(parse_run_args([*common, "--shots", "1"]))] == [3, 30, 300]


def test_a_searched_regime_is_drawn_in_its_regimes_colour_hollow_and_right_after_it():
    from matplotlib.colors import to_hex

    from odinw_bench.report.plots import efficiency_data, suite_figure

    records = []
    for task, base in (("alpha", 0.0), ("beta", 0.2)):
        records.append(record(task, "zero-shot", 0, 3, base + 0.1))
        for regime, searched in (("full", True), ("prompt", False), ("full", False), ("prompt", True)):
            for i, seed in enumerate(SEEDS):
                run = record(task, regime, 1, seed, base + 0.05 * searched + 0.1 * i)
                records.append({**run, "run_id": run["run_id"] + "-searched", "search": {"params": ["lr"]}}
                               if searched else run)
    data = efficiency_data(grid.build_report(records, tasks=["alpha", "beta"], suite="duo"))
    assert data.regimes == ["zero-shot", "prompt", "prompt+search", "full", "full+search"]
    (ax,) = suite_figure(data, "duo").axes
    lines = _by_label(ax)
    for regime in ("prompt", "full"):
        plain, searched = lines[regime], lines[f"{regime}+search"]  # one model: labelled by regime alone
        assert to_hex(plain.get_color()) == to_hex(searched.get_color())
        assert to_hex(searched.get_markerfacecolor()) == "#ffffff" != to_hex(plain.get_markerfacecolor())
        assert searched.get_linestyle() == "--" and plain.get_linestyle() == "-"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "zero-shot (reference line)", "prompt", "prompt+search", "full", "full+search"]
