"""notebooks/compare_runs.ipynb: stored without outputs, and runs top to bottom on a local sweep."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.eval_stub import copy_sweep
from tests.sweep_fixture import tiny_sweep

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "compare_runs.ipynb"


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sweep(tmp_path_factory)


def test_the_notebook_is_stored_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "SWEEP_DIR" in code[0].source and "SOURCE" in code[0].source


def execute(cwd: Path) -> tuple[str, list[dict], str]:
    """Run the notebook, plus a cell printing the kernel's interpreter, in `cwd`.

    Returns (its stdout, its outputs, its HTML)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    html = "".join(output.get("data", {}).get("text/html", "") for output in outputs)
    assert text.strip().splitlines()[-1] == sys.executable  # the kernel is this interpreter
    return text, outputs, html


def test_the_notebook_runs_top_to_bottom_on_a_local_sweep(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = copy_sweep(sweep, tmp_path / "old", points=None)  # from before the evaluation protocol
    monkeypatch.setenv("STYLELAB_SWEEP_DIR", str(old))
    monkeypatch.setenv("STYLELAB_SOURCE", "local")
    text, outputs, html = execute(tmp_path)
    assert f"{old}: 4 runs (4 finished); swept: style_weight, layers" in text
    pngs = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(pngs) == 2  # the loss curves and the per-layer losses (no eval/*: no trade-off)
    assert html.count('<table class="grid">') == 1 and html.count("data:image/png;base64,") == 4 + 2
    assert "No trade-off plot: no finished run recorded eval/content and eval/style" in text


def test_the_notebook_finds_a_sweep_named_from_the_repository_root_and_draws_the_trade_off(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_sweep(sweep, tmp_path / "multirun" / "tiny")  # with eval/* (jobs 0, 1, 3 Pareto-optimal)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.setenv("STYLELAB_SWEEP_DIR", "multirun/tiny")  # as the README's command names it
    monkeypatch.setenv("STYLELAB_SOURCE", "local")
    monkeypatch.setenv("STYLELAB_COLOR_BY", "style_weight")
    text, outputs, _ = execute(tmp_path / "notebooks")  # where jupyter execute runs the kernel
    assert f"{tmp_path / 'multirun' / 'tiny'}: 4 runs (4 finished)" in text
    assert "plots: colour by style_weight, label and line style by layers" in text
    pngs = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(pngs) == 3  # the trade-off, the loss curves, the per-layer losses
    listed = re.findall(r"^  job (\d) ", text.split("Pareto-optimal runs:")[1], re.MULTILINE)
    assert listed == ["0", "1", "3"]


# A stand-in for the W&B public API that serves the tiny sweep's run folders as W&B runs.
FAKE_WANDB = """
    import json, os, shutil
    from pathlib import Path

    import yaml

    SWEEP = Path(os.environ["FAKE_WANDB_SWEEP"])


    class File:
        def __init__(self, source):
            self.source = source

        def download(self, root, replace=False):
            target = Path(root) / "media" / self.source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.source, target)


    class Run:
        def __init__(self, folder):
            self.folder, self.id, self.state, self.group = folder, f"run{folder.name}", "finished", "g1"
            self.created_at = folder.name
            self.name = ",".join(yaml.safe_load((folder / ".hydra/overrides.yaml").read_text()))
            self.config = yaml.safe_load((folder / "config.yaml").read_text())
            self.summary_metrics = json.loads((folder / "summary.json").read_text())
            for key in ("final", "content", "style"):
                self.summary_metrics[f"images/{key}"] = {"_type": "image-file", "path": f"media/{key}.png"}

        def scan_history(self, keys):
            rows = [json.loads(line) for line in (self.folder / "losses.jsonl").read_text().splitlines()]
            return [{"step": r["step"], **{f"loss/{k}": v for k, v in r.items() if k != "step"}} for r in rows]

        def file(self, name):
            return File(self.folder / Path(name).name)


    class Api:
        default_entity = "me"

        def runs(self, path, filters=None, order=None, per_page=None):
            assert path == "me/stylelab", path
            runs = [Run(folder) for folder in sorted(SWEEP.iterdir()) if folder.is_dir()]
            return runs if filters in (None, {"group": "g1"}) else []
"""


def test_the_notebook_reads_a_wandb_group_through_the_public_api(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "wandb.py").write_text(textwrap.dedent(FAKE_WANDB))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))  # the kernel imports this wandb
    monkeypatch.setenv("FAKE_WANDB_SWEEP", str(sweep))
    monkeypatch.setenv("STYLELAB_SOURCE", "wandb")
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.delenv("STYLELAB_WANDB_GROUP", raising=False)
    text, _, html = execute(tmp_path)
    assert "W&B me/stylelab, group g1: 4 runs (4 finished); swept: style_weight, layers" in text
    assert html.count('<table class="grid">') == 1 and html.count("data:image/png;base64,") == 4 + 2
