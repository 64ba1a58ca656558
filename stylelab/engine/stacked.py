"""The objectives of K batched jobs as one module: per-job settings as tensors, one computation
per layer for all jobs.

Each term of each job fills one slot (a column) of a (K, slots) value matrix. Terms that stack
are grouped by what they compute, and each group is one computation for all its jobs:

- content MSE at a layer: the jobs' targets stacked (J, C, H, W), weights (J,);
- Gram style loss at a layer (no synthesis-frame mask; style-frame masks and style blends only
  change the target): one batched Gram matrix (bmm) for the J jobs, targets (J, C, C);
- total variation of one norm: the jobs' images at once.

J <= K: a job whose objective does not read a layer is left out of that layer's group (the
group's job indices are a constant tensor, so the step stays host-sync-free and capturable).
Other terms (W2, masked style losses, any other kind) are evaluated per job on the job's slice.
A job's kind sums and total are sums over its slots; `rows` gives each job its terms in the
order its own objective returns them (`Objective.names`), so losses files keep their columns.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn

from stylelab.engine.objective import Objective
from stylelab.engine.statistics import GramStatistic, GramStyleLoss
from stylelab.engine.terms import ContentTerm, Features, StyleTerm, Term, TVTerm


def _stacks(term: Term) -> tuple | None:
    """The group a term stacks into, or None for per-job evaluation."""
    if isinstance(term, ContentTerm):
        return ("content", term.layer)
    if isinstance(term, TVTerm):
        return ("tv", term.loss.kind) if term.weight else ("zero",)
    if isinstance(term, StyleTerm) and isinstance(term.statistic, GramStatistic):
        losses = list(term.losses)
        plain = len(losses) == 1 and term.region_weights == [1.0]
        if plain and isinstance(losses[0], GramStyleLoss) and losses[0].mask is None:
            return ("gram", term.layer)
    return None


def _tv(image: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image total variation of (J, 3, H, W), as `losses.TVLoss` computes it for one."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    dims = (1, 2, 3)
    if norm == "l2":
        return 0.5 * (dx.square().mean(dims) + dy.square().mean(dims))
    return 0.5 * (dx.abs().mean(dims) + dy.abs().mean(dims))


class _GramMSE(torch.autograd.Function):
    """Per image, the mean squared difference of the Gram matrix (normalised as
    `losses.gram_matrix` does, fp32) from its target, (J,), with the gradient in closed form
    (4 alpha / C^2) D F for D = alpha F F^T - T. One (J, C, C) temporary in all, where autograd
    through gram, divide, subtract, square and mean makes eight: at C = 512 they are 16 MiB
    each for 16 jobs, and fresh large allocations cost page faults."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        c, pixels = flat.shape[1], flat.shape[2]
        alpha = 1 / (c * pixels)
        difference = torch.baddbmm(targets, flat, flat.transpose(1, 2), beta=-1, alpha=alpha)
        ctx.save_for_backward(flat, difference)
        ctx.scale = 4 * alpha / (c * c)
        return torch.linalg.vector_norm(difference, dim=(1, 2)).square() / (c * c)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        flat, difference = ctx.saved_tensors
        return torch.bmm(difference, flat) * (grad * ctx.scale)[:, None, None], None


def _gram_mse(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`_GramMSE` of (J, C, H, W) features, autocast off (Gram matrices are fp32)."""
    n, c, h, w = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        return _GramMSE.apply(features.reshape(n, c, h * w).float(), targets)


class _Group(nn.Module):
    """Terms of several jobs computed together: their jobs, slots, weights and targets."""

    jobs: torch.Tensor
    slots: torch.Tensor
    weights: torch.Tensor
    targets: torch.Tensor

    def __init__(self, key: tuple, members: list[tuple[int, int, Term]], device: torch.device):
        super().__init__()
        self.kind = key[0]
        self.layer = key[1] if self.kind in ("content", "gram") else None
        self.norm = key[1] if self.kind == "tv" else None
        jobs = [job for job, _, _ in members]
        self.register_buffer("jobs", torch.tensor(jobs, dtype=torch.long, device=device))
        self.register_buffer("slots", torch.tensor([s for _, s, _ in members], device=device))
        weights = [term.weight for _, _, term in members]
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32, device=device))
        targets = None
        if self.kind == "content":
            targets = [cast(ContentTerm, t).loss.target for _, _, t in members]
        elif self.kind == "gram":
            losses = [cast(StyleTerm, t).losses[0] for _, _, t in members]
            targets = [cast(torch.Tensor, loss.target) for loss in losses]
        self.register_buffer("targets", None if targets is None else torch.cat(targets))
        self.identity = jobs == list(range(len(jobs)))

    def forward(self, features: Features, image: torch.Tensor) -> torch.Tensor:
        """The group's weighted values, one per member (J,)."""
        if self.kind == "zero":
            return self.weights * 0
        source = image if self.layer is None else features[self.layer]
        if not (self.identity and source.shape[0] == len(self.jobs)):
            source = source.index_select(0, self.jobs)
        if self.kind == "tv":
            return self.weights * _tv(source.float(), str(self.norm))
        if self.kind == "content":
            return self.weights * (source.float() - self.targets).square().mean((1, 2, 3))
        return self.weights * _gram_mse(source, self.targets)


class StackedObjective(nn.Module):
    """The objectives of a batch's jobs (one per image of the batch) evaluated together.

    `forward(features, image)` takes the batch's features and (K, 3, H, W) image and returns
    the (K, slots + kinds + 1) value matrix: every slot, each kind's sum, the total. `rows`
    picks each job's terms out of it; `totals` is the (K,) column of totals.
    """

    def __init__(self, objectives: Sequence[Objective]):
        super().__init__()
        if not objectives:
            raise ValueError("a stacked objective needs at least one job")
        device = objectives[0].encoder.mean.device
        grouped: dict[tuple, list[tuple[int, int, Term]]] = defaultdict(list)
        self.single: list[tuple[int, int, Term]] = []  # (job, slot, term): per-job evaluation
        slot_of: list[list[int]] = []
        kinds: list[str] = []
        slot_kinds: list[str] = []
        for job, objective in enumerate(objectives):
            own = []
            for term in cast(list[Term], list(objective.terms)):
                slot = len(slot_kinds)
                slot_kinds.append(term.kind)
                own.append(slot)
                key = _stacks(term)
                (self.single if key is None else grouped[key]).append((job, slot, term))
            slot_of.append(own)
            kinds += [kind for kind in objective.kinds if kind not in kinds]
        self.groups = nn.ModuleList(
            _Group(key, members, device) for key, members in grouped.items()
        )
        self.size, self.slot_count = len(objectives), len(slot_kinds)
        self.kinds = kinds
        self.kind_slots = [
            torch.tensor([s for s, k in enumerate(slot_kinds) if k == kind], device=device)
            for kind in kinds
        ]
        self.names = [objective.names for objective in objectives]
        self.columns: list[torch.Tensor] = []
        total_column = self.slot_count + len(kinds)
        for job, objective in enumerate(objectives):
            layered = [
                s for s, t in zip(slot_of[job], objective.terms, strict=True) if t.layer is not None
            ]
            own_kinds = [self.slot_count + kinds.index(kind) for kind in objective.kinds]
            columns = [*layered, *own_kinds, total_column]
            self.columns.append(torch.tensor(columns, device=device))
        self.total_column = total_column
        self.layers: list[list[int]] = [list(o.encoder.layers) for o in objectives]
        self.single_at = tuple(
            torch.tensor([member[i] for member in self.single], dtype=torch.long, device=device)
            for i in (0, 1)
        )

    def forward(self, features: Features, image: torch.Tensor) -> torch.Tensor:
        values = image.new_zeros((self.size, self.slot_count), dtype=torch.float32)
        for group in cast(list[_Group], list(self.groups)):
            values = values.index_put((group.jobs, group.slots), group(features, image))
        if self.single:
            single = [
                term({layer: features[layer][job : job + 1] for layer in self.layers[job]},
                     image[job : job + 1]).float().reshape(())
                for job, _, term in self.single
            ]  # fmt: skip
            values = values.index_put(self.single_at, torch.stack(single))
        sums = torch.stack([values.index_select(1, slots).sum(1) for slots in self.kind_slots], 1)
        return torch.cat([values, sums, sums.sum(1, keepdim=True)], 1)

    def totals(self, matrix: torch.Tensor) -> torch.Tensor:
        """Each job's total, (K,)."""
        return matrix[:, self.total_column]

    def rows(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        """Each job's terms in its objective's order (`names`), as `Synthesizer.update` stacks
        them."""
        return [matrix[job].index_select(0, columns) for job, columns in enumerate(self.columns)]


def stacked_loss(
    objective: StackedObjective, encoder: Callable[[torch.Tensor], Features]
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """`image -> (value matrix, sum of the jobs' totals)`, for `Synthesizer.differentiate`."""

    def loss(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        matrix = objective(encoder(image), image)
        return matrix, objective.totals(matrix).sum()

    return loss
