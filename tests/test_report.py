"""`python -m stylelab.report` on a tiny real multirun, checked in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from stylelab import report
from tests.conftest import run_python
from tests.sweep_fixture import tiny_sweep

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
]  # fmt: skip
# Appended to a copy of the page: counts the images that decoded, then sorts the table by
# final/total and records the job order, as data attributes that --dump-dom shows.
PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  const header = [...document.querySelectorAll("table.runs.sortable th")].find(th => th.textContent === "final/total");
  header.click();
  document.body.dataset.order = [...document.querySelectorAll("table.runs.sortable tbody tr")].map(r => r.cells[0].textContent).join(",");
});</script>"""


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sweep(tmp_path_factory)


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI must: apt-get install -y chromium)")
        pytest.skip("chromium is not installed: apt-get update && apt-get install -y chromium")
    return path


def run_report(*args: str) -> subprocess.CompletedProcess:
    """`python -m stylelab.report args...` (forked: tests/cli_fork.py)."""
    return run_python(["-m", "stylelab.report", *args], Path.cwd(), dict(os.environ), 120)


def test_report_of_a_real_sweep_opens_in_chromium_with_every_image(
    sweep: Path, tmp_path: Path
) -> None:
    result = run_report(str(sweep), "--out", str(tmp_path / "made" / "report.html"))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "made" / "report.html").read_text()
    sources = re.findall(r'<img[^>]* src="([^"]*)"', page)
    # the grid, content and style, trade-off plot, loss curves, per layer
    assert len(sources) == 4 + 2 + 1 + 1 + 1
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert (
        "style_weight \\ layers" in page
        and "layers=approach2" in page
        and "style_weight=1e+06" in page
    )

    moved = tmp_path / "elsewhere" / "page.html"  # self-contained: works away from the runs
    moved.parent.mkdir()
    moved.write_text(page.replace("</body>", PROBE + "</body>"))
    browser = chromium()
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", moved.as_uri()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    attributes = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(0)))
    assert attributes["images"] == "9" and attributes["loaded"] == "9", attributes
    totals = {
        job.name: json.loads((job / "summary.json").read_text())["final/total"]
        for job in sweep.iterdir()
        if job.is_dir()
    }
    assert attributes["order"].split(",") == sorted(totals, key=totals.get)

    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1600",
         f"--screenshot={shot}", moved.as_uri()],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        assert np.unique(np.asarray(image.convert("L"))).size > 5  # not a blank page


def test_a_folder_without_runs_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    result = run_report(str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "no runs here" in result.stderr


def test_the_parent_of_sweeps_reports_the_sweeps_in_it(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "parent.html"
    assert report.main([str(sweep.parent), "--out", str(out)]) == 0
    assert f"stylelab sweep {sweep.parent}" in out.read_text()
    assert report.latest_sweep(sweep.parent) == sweep


def test_an_unknown_axis_is_a_usage_error(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert report.main([str(sweep), "--out", str(tmp_path / "r.html"), "--rows", "nope"]) == 2
    assert (
        "--rows nope: no run has that key; the swept keys are style_weight, layers"
        in capsys.readouterr().err
    )


def test_failed_and_killed_jobs_show_their_status_and_error(sweep: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("checkpoint.pt", "frames"))
    (copy / "1" / "final.png").unlink()
    (copy / "1" / "summary.json").write_text(
        json.dumps({"status": "failed", "error": "the loss became nan"})
    )
    (copy / "3" / "summary.json").unlink()
    with (copy / "3" / "run.log").open("a") as log:
        log.write("[2024-01-01 00:00:00,000][stylelab][ERROR] - image not found: /x.jpg\n")
    out = report.write_report(copy, rows="layers", cols="style_weight")
    page = out.read_text()
    assert out == copy / "report.html"
    assert page.count('class="failed"') == 2 and page.count('<tr class="bad">') == 2
    assert "the loss became nan" in page and "image not found: /x.jpg" in page
    assert "<td>killed</td>" in page  # no summary.json: stylelab.run_folder.Status.KILLED
    assert "layers \\ style_weight" in page


def test_only_regular_image_files_in_the_run_folder_are_embedded(
    sweep: Path, tmp_path: Path
) -> None:
    """Issue 26: a symlink (to a secret, or even to an image elsewhere), a FIFO, a file that is
    not an image and one over the size bound are all shown as missing, and the report ends."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("checkpoint.pt", "frames"))
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-TOKEN")
    outside = tmp_path / "elsewhere.png"
    shutil.copy(copy / "0" / "final.png", outside)
    for job_dir, target in (("0", secret), ("1", outside)):
        (copy / job_dir / "final.png").unlink()
        (copy / job_dir / "final.png").symlink_to(target)
    (copy / "2" / "final.png").unlink()
    os.mkfifo(copy / "2" / "final.png")
    (copy / "3" / "content.png").write_bytes(b"TOP-SECRET-TOKEN" * 10)
    result = run_report(str(copy))
    assert result.returncode == 0, result.stderr
    page = (copy / "report.html").read_text()
    assert page.count(report.MISSING_IMAGE) == 3  # jobs 0 to 2; job 3 keeps its final image
    assert "TOP-SECRET-TOKEN" not in page and "VE9QLVNFQ1JFVC1UT0tFTi" not in page  # nor base64
    assert page.count('<img src="data:image/png') == 1 + 2  # job 3's final, content and style
    assert set(report.load_job(copy / "3").images) == {"final", "style"}


def test_images_over_the_size_bound_are_not_embedded(sweep: Path, monkeypatch) -> None:
    final = sweep / "0" / "final.png"
    monkeypatch.setattr(report, "MAX_IMAGE_BYTES", final.stat().st_size - 1)
    assert report.image_bytes(final) is None and report.data_uri(final) is None


def job(name: str, **overrides: str) -> report.Job:
    return report.Job(name, overrides=dict(overrides))


def test_swept_keys_skip_constant_and_implied_keys() -> None:
    jobs = [
        job(
            "0", steps="3", pair="berkeley_starry", **{"pair.content": "b.jpg"}, layers="approach1"
        ),
        job(
            "1", steps="3", pair="berkeley_starry", **{"pair.content": "b.jpg"}, layers="approach2"
        ),
        job("2", steps="3", pair="bridge_scream", **{"pair.content": "g.jpg"}, layers="approach1"),
    ]
    assert report.swept_keys(jobs) == (["pair", "layers"], ["pair", "pair.content", "layers"])
    assert report.choose_axes(jobs, None, None) == ("pair", "layers", ["pair.content"])
    assert report.choose_axes(jobs, None, "pair") == ("layers", "pair", ["pair.content"])
    one_key = [job("0", style_weight="1000.0"), job("1", style_weight="1e6")]
    assert report.choose_axes(one_key, None, None) == (None, "style_weight", [])  # a single row
    three = [job(str(i), a=str(i % 2), b=str(i // 2 % 2), c=str(i // 4)) for i in range(8)]
    assert report.choose_axes(three, None, None) == ("a", "b", ["c"])


def test_overrides_and_run_names_parse_back() -> None:
    assert report.parse_overrides(["+a.b=1", "pair.content=skimage\\:coffee", "~x", "c=d=e"]) == {
        "a.b": "1", "pair.content": "skimage:coffee", "c": "d=e",
    }  # fmt: skip
    name = "steps=3,layers.style=[0,5,10],style_weight=1000.0,+tag=x"
    assert report.split_run_name(name) == [
        "steps=3",
        "layers.style=[0,5,10]",
        "style_weight=1000.0",
        "+tag=x",
    ]
    assert report.label("1000000.0") == "1e+06" and report.label("approach2") == "approach2"


class FakeRun(SimpleNamespace):
    def scan_history(self, keys: list[str]) -> list[dict]:
        return [
            {
                "step": s,
                "loss/total": 3.0 - s,
                "loss/content": 0.1,
                "loss/style": 2.0,
                "loss/tv": 0.5,
            }
            for s in range(3)
        ]

    def file(self, name: str) -> SimpleNamespace:
        def download(root: str, replace: bool) -> None:
            target = Path(root) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), "red").save(target)

        return SimpleNamespace(download=download)


def test_wandb_runs_become_jobs(tmp_path: Path) -> None:
    config = {
        "pair": {"name": "astronaut_hubble"},
        "layers": {"name": "approach1"},
        "style_weight": 1e6,
    }
    runs = [
        FakeRun(id="b2", name="layers=approach2", state="finished", created_at="2024-01-02", config=config,
                summary_metrics={"status": "finished", "final/total": 1.5, "images/final": {"path": "media/f.png"},
                                 "loss/total": {"min": 1.0}, "loss/style/conv1_1": 0.5}),
        FakeRun(id="a1", name="renamed by hand", state="crashed", created_at="2024-01-01", config=config, summary_metrics={}),
    ]  # fmt: skip
    api = SimpleNamespace(runs=lambda path, filters: runs if filters == {"group": "g"} else [])
    jobs = report.jobs_from_wandb("me/stylelab", "g", tmp_path, api=api)
    assert [j.name for j in jobs] == ["a1", "b2"]
    assert jobs[0].status == "crashed" and jobs[0].overrides["layers"] == "approach1"
    assert jobs[1].overrides["layers"] == "approach2" and jobs[1].images["final"].is_file()
    assert jobs[1].curve("total") == ([0, 1, 2], [3.0, 2.0, 1.0])
    assert report.swept_keys(jobs)[0] == ["layers"]
    assert 'alt="job b2"' in report.render(jobs, "w&b")
    with pytest.raises(report.ReportError, match="no runs in group other"):
        report.jobs_from_wandb("me/stylelab", "other", tmp_path, api=api)
