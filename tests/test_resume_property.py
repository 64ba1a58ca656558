"""Property: resume never loses or rewrites a finished record (issue 26).

A seeded random loop (a handful of examples, 32 px, in-process): a run of a random schedule is
stopped after a random step (or finishes), then resumed with random forbidden changes (weights,
layers, steps too low or changing nothing, a finished stage's steps, a checkpoint copied from
another run), each of which must change no byte of the folder, and then with a random allowed
one (more steps), which must give the straight run's rows (the same run, within float
rounding; after a finished run, whose checkpoint has no optimiser state, its rows unchanged)
with no gap or duplicate.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

from tests.resume_jobs import PYRAMID, TINY, job, rows
from tests.test_fault_runs import snapshot

EXAMPLES = 5
pytestmark = pytest.mark.usefixtures("one_thread")


def schedule(counts: list[int]) -> list[str]:
    """Overrides for one stage of `counts[0]` steps, or a pyramid of these stage steps."""
    if len(counts) == 1:
        return [f"steps={counts[0]}"]
    return [*PYRAMID, f"schedule.steps=[{','.join(map(str, counts))}]"]


def allowed(rng: random.Random, counts: list[int], stage: int, done: int) -> list[int]:
    """Stage steps that keep the finished stages and leave steps to do (random growth)."""
    first = sum(counts[:stage])
    new = [*counts[:stage], max(counts[stage], done - first) + rng.randint(0, 2)]
    new += [rng.randint(1, 4) for _ in counts[stage + 1 :]]
    if sum(new) <= done:
        new[-1] += done + 1 - sum(new)
    return new


def forbidden(counts: list[int], stage: int, done: int, rng: random.Random) -> list[list[str]]:
    """Changes a resume of a run at step `done` (in `stage`) of `counts` must refuse."""
    changes = [["style_weight=5"], ["layers.style=[0,7]"], ["copied"]]
    if len(counts) == 1:
        changes.append([f"steps={rng.randint(1, done)}"])
    else:
        changes.append(["steps=100"])  # schedule.steps sets the stages: no effect
        if stage == 1:
            changes.append(schedule([counts[0] + 1, counts[1] + 1]))
        elif done > 1:
            changes.append(schedule([done - 1, counts[1]]))  # below the step it reached
    return changes


def test_resume_never_loses_or_rewrites_a_finished_record(tmp_path: Path) -> None:
    rng = random.Random(39)  # its 5 examples cover every kind of stop and of change above
    straight: dict[tuple[int, ...], Path] = {}

    def straight_run(counts: list[int]) -> Path:
        key = tuple(counts)
        if key not in straight:
            straight[key] = tmp_path / f"straight-{'-'.join(map(str, key))}"
            assert job(straight[key], *TINY, *schedule(counts)) == 0
        return straight[key]

    for example in range(EXAMPLES):
        counts = [rng.randint(2, 6)] if example % 2 else [rng.randint(2, 4), rng.randint(2, 4)]
        stop = rng.choice([None, *range(1, sum(counts))])
        run_dir = tmp_path / f"run-{example}"
        assert job(run_dir, *TINY, *schedule(counts), stop_at=stop) == (130 if stop else 0)
        state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        stage, done = int(state["stage"]), int(state["synthesis"]["step"])
        assert done == (stop or sum(counts))
        grown = allowed(rng, counts, stage, done)
        other = straight_run(grown)  # same settings but steps: its checkpoint is another run's
        for change in rng.sample(forbidden(counts, stage, done, rng), 3):
            original = (run_dir / "checkpoint.pt").read_bytes()
            if change == ["copied"]:
                shutil.copy(other / "checkpoint.pt", run_dir / "checkpoint.pt")
                change = []
            before = snapshot(run_dir)
            assert job(run_dir, f"resume={run_dir}", *change) == 1, (example, change)
            assert snapshot(run_dir) == before, (example, change)
            (run_dir / "checkpoint.pt").write_bytes(original)
        lines = (run_dir / "losses.jsonl").read_text().splitlines()
        assert job(run_dir, f"resume={run_dir}", *schedule(grown)) == 0, (example, grown)
        got, want = rows(run_dir), rows(other)
        assert [row["step"] for row in got] == list(range(sum(grown))), (example, grown)
        assert (run_dir / "losses.jsonl").read_text().splitlines()[:done] == lines
        if stop:  # the checkpoint kept the optimiser's state: the straight run's rows
            for row, expected in zip(got, want, strict=True):
                assert row == pytest.approx(expected, rel=1e-5), (example, row["step"])
