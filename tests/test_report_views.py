"""The report's comparison views: trade-off plot with its Pareto set, loss curves coloured by a
swept key, unweighted per-layer losses, several sweeps in one page, mean and spread over seeds.
Evaluation metrics are written into the tiny sweep's summaries by hand (tests/eval_stub.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba

from stylelab import report
from stylelab.layer_losses import layer_losses, unweighted_total
from stylelab.seeds import seed_rows
from stylelab.tradeoff import pareto_jobs, tradeoff_figure
from tests.eval_stub import POINTS, add_eval, copy_sweep
from tests.sweep_fixture import tiny_sweep


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sweep(tmp_path_factory)


def section(page: str, start: str, end: str = "<h2") -> str:
    return page[page.index(start) : page.index(end, page.index(start) + len(start))]


def test_the_trade_off_plot_marks_and_lists_the_pareto_runs(sweep: Path, tmp_path: Path) -> None:
    copy = copy_sweep(sweep, tmp_path / "s")
    out = report.write_report(copy, color_by="layers", label_by="style_weight")
    page = out.read_text()
    tradeoff = section(page, 'id="trade-off"')
    assert 'alt="trade-off plot"' in tradeoff and "colour: layers, label: style_weight" in tradeoff
    listed = re.findall(r"<tr><td>(\d)</td>", section(tradeoff, "Pareto-optimal runs", "</table>"))
    assert listed == ["0", "1", "3"]
    runs = section(page, "<h2>Runs</h2>", "</table>")
    assert '<th title="click to sort">eval/content</th>' in runs and ">eval/color<" in runs
    assert "Evaluation protocol: stub-1." in page


def test_the_trade_off_plot_colours_by_one_key_and_labels_by_another(
    sweep: Path, tmp_path: Path
) -> None:
    jobs = report.load_jobs(copy_sweep(sweep, tmp_path / "s"))
    figure = tradeoff_figure(jobs, color_by="layers", label_by="style_weight")
    ax = figure.axes[0]
    colours = [tuple(c.get_facecolor()[0]) for c in ax.collections[: len(jobs)]]
    layers = [job.value("layers") for job in jobs]
    assert len(set(colours)) == 2
    assert all((a == b) == (la == lb) for a, la in zip(colours, layers, strict=True)
               for b, lb in zip(colours, layers, strict=True))  # fmt: skip
    assert sorted(text.get_text() for text in ax.texts) == ["1000", "1000", "1e+06", "1e+06"]
    assert [job.name for job in pareto_jobs(jobs)] == ["0", "1", "3"]


def test_runs_without_evaluation_still_render_and_say_why_there_is_no_trade_off(
    sweep: Path, tmp_path: Path
) -> None:
    page = report.write_report(copy_sweep(sweep, tmp_path / "old", points=None)).read_text()
    assert "No trade-off plot: no finished run recorded eval/content and eval/style" in page
    assert 'alt="trade-off plot"' not in page and "<th>eval/content" not in page
    failed = copy_sweep(sweep, tmp_path / "failed", points=None)
    for name in POINTS:
        add_eval(failed / name, {"eval/error": "final.png: cannot identify image file"})
    page = report.write_report(failed).read_text()
    assert (
        "No trade-off plot: the evaluation failed (final.png: cannot identify image file)" in page
    )
    assert "evaluation failed: final.png: cannot identify image file" in page  # the table's cell


def test_loss_curves_take_one_colour_per_setting_and_a_line_style_per_second_key(
    sweep: Path,
) -> None:
    jobs = report.load_jobs(sweep)
    figure = report.loss_figure(jobs, color_by="style_weight", style_by="layers")
    lines = figure.axes[0].lines
    assert len(lines) == 4
    by_job = {job.name: line for job, line in zip(jobs, lines, strict=True)}
    for a in jobs:
        for b in jobs:
            same_colour = to_rgba(by_job[a.name].get_color()) == to_rgba(by_job[b.name].get_color())
            same_style = by_job[a.name].get_linestyle() == by_job[b.name].get_linestyle()
            assert same_colour == (a.value("style_weight") == b.value("style_weight"))
            assert same_style == (a.value("layers") == b.value("layers"))
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["style_weight=1000", "style_weight=1e+06", "layers=approach1",
                      "layers=approach2"]  # fmt: skip


def test_unweighted_per_layer_losses_divide_by_the_global_and_the_layer_weight() -> None:
    job = report.Job(
        "0",
        overrides={"style_weight": "1e6"},
        config={"style_weight": 1e6, "content_weight": 2.0,
                "layers": {"style_weights": [1.0, 0.5, 0.0], "content_weights": None}},
        summary={"final/style/conv1_1": 4.0, "final/style/conv2_1": 4.0,
                 "final/style/conv3_1": 0.0, "final/content/conv4_2": 3.0},
    )  # fmt: skip
    assert layer_losses(job, "style") == {"conv1_1": 4.0, "conv2_1": 4.0, "conv3_1": 0.0}
    assert layer_losses(job, "style", unweighted=True) == {"conv1_1": 4e-6, "conv2_1": 8e-6}
    assert layer_losses(job, "content", unweighted=True) == {"conv4_2": 1.5}
    assert unweighted_total(job, "style") == pytest.approx(1.2e-5)


def test_the_report_shows_unweighted_losses_beside_the_weighted(sweep: Path, tmp_path: Path):
    page = report.write_report(sweep, out=tmp_path / "r.html").read_text()
    assert 'alt="per-layer losses"' in page
    assert ">style (unweighted)</th>" in page and ">content (unweighted)</th>" in page


def test_several_sweeps_make_one_report(sweep: Path, tmp_path: Path) -> None:
    first = copy_sweep(sweep, tmp_path / "runs" / "a")
    copy_sweep(sweep, tmp_path / "runs" / "b", points=None)
    for paths in ([first, tmp_path / "runs" / "b"], [tmp_path / "runs"]):
        out = report.write_report(paths)
        assert out == tmp_path / "runs" / "report.html"
        page = out.read_text()
        assert (
            "8 runs, 8 finished, from 2 sweeps (a, b); swept: sweep, style_weight, layers" in page
        )
        assert page.count('alt="job a/') == 4 and page.count('alt="job b/') == 4
        assert "sweep \\ style_weight" in page
    assert (
        report.main([str(first), str(tmp_path / "runs" / "b"), "--out", str(tmp_path / "x.html")])
        == 0
    )


def seeded_jobs() -> list[report.Job]:
    jobs = []
    for i, (weight, seed, content, style) in enumerate(
        [
            ("1e3", "0", 1.0, 4.0),
            ("1e3", "1", 3.0, 6.0),
            ("1e6", "0", 5.0, 1.0),
            ("1e6", "1", 5.0, 1.0),
        ]
    ):
        jobs.append(report.Job(
            str(i), overrides={"style_weight": weight, "seed": seed},
            summary={"status": "finished", "eval/content": content, "eval/style": style,
                     "final/total": float(i)},
        ))  # fmt: skip
    return jobs


def test_a_swept_seed_gives_the_mean_and_spread_per_setting() -> None:
    jobs = seeded_jobs()
    rows = seed_rows(jobs, ["style_weight", "seed"], ["eval/content", "eval/style"])
    assert rows == [(("1e3",), 2, ["2 ± 1.4", "5 ± 1.4"]), (("1e6",), 2, ["5 ± 0", "1 ± 0"])]
    page = report.render(jobs, "seeds")
    table = section(page, "Mean and spread over seeds", "</table>")
    assert "<th>eval/content (mean ± sd)</th>" in table and "<td>2 ± 1.4</td>" in table
    figure = tradeoff_figure(jobs, "style_weight", None, ["style_weight", "seed"])
    assert "mean ± sd over seeds" in figure.axes[0].get_title()
    assert len(figure.axes[0].containers) == 2  # one error bar per setting


def test_the_page_template_escapes_what_runs_recorded() -> None:
    jobs = seeded_jobs()
    jobs[0].overrides["style_weight"] = "<script>x</script>"
    page = report.render(jobs, "<b>title</b>")
    assert "<b>title</b>" not in page and "&lt;b&gt;title&lt;/b&gt;" in page
    assert "<script>x</script>" not in page


def test_each_pair_has_its_own_pareto_front() -> None:
    """Distances to different inputs are not on one scale: a run of one pair never dominates a
    run of another, and the plot draws one front per pair."""

    def job(name: str, content: str, point: tuple[float, float]) -> report.Job:
        config = {"pair": {"content": content, "style": "skimage:hubble_deep_field"}}
        summary = {"status": "finished", "eval/content": point[0], "eval/style": point[1]}
        return report.Job(name, config=config, summary=summary)

    jobs = [
        job("0", "skimage:astronaut", (1.0, 1.0)),  # dominates job 1, and would dominate 2 and 3
        job("1", "skimage:astronaut", (2.0, 2.0)),
        job("2", "skimage:coffee", (3.0, 5.0)),
        job("3", "skimage:coffee", (5.0, 3.0)),
    ]
    assert [j.name for j in pareto_jobs(jobs)] == ["0", "2", "3"]
    fronts = tradeoff_figure(jobs).axes[0].lines  # the step lines of the Pareto fronts
    assert sorted(len(line.get_xdata()) for line in fronts) == [1, 2]
