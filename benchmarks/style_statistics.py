"""Gram vs W2 style statistics on real VGG-19 features: cost, loss scale and W2's accuracy.

    python -m benchmarks.style_statistics [--size 256] [--repeats 5] [--weights random]
    python -m benchmarks.style_statistics --whole --size 64 --repeats 7
    python -m benchmarks.style_statistics --accuracy --size 64

Default: per style layer, milliseconds for loss + backward (from features that require grad,
so the VGG pass is excluded) and the ratio W2 / Gram of the unweighted losses between two
scikit-image photos (astronaut as synthesis, coffee as style), plus the W2 value at identical
features (its Newton-Schulz floor).

`--whole`: milliseconds per whole evaluation (VGG forward and backward, every term, the Adam
update; approach2 layers, as a run builds it), Gram and W2 steps interleaved, fastest and
median of `--repeats` after 2 warm-up steps each.

`--accuracy`: W2's loss and feature gradient against the float64 eigendecomposition reference
(`w2_reference`), per layer and Newton-Schulz iteration count, and the formulation before the
closed-form gradient (`gaussian_w2_squared`, autograd through 15 iterations).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch

from stylelab.config import Config, LayersConfig, PairConfig
from stylelab.engine.features import LAYER_INDEX, VGGFeatures, load_vgg19_features
from stylelab.engine.images import pil_to_tensor, resize_long_side
from stylelab.engine.losses import StyleLoss
from stylelab.engine.sources import load_skimage
from stylelab.engine.statistics import (
    DEFAULT_NS_ITERATIONS,
    DEFAULT_RIDGE,
    FeatureMoments,
    W2Statistic,
    W2StyleLoss,
    _trace,
    feature_mean_and_covariance,
    feature_moments,
    gaussian_w2_squared,
    sqrtm_eigh,
)
from stylelab.factory import SourceImages, build_synthesis

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
APPROACH2 = ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")
APPROACH2_CONTENT = ("relu4_2", "conv4_4")
ACCURACY_ITERATIONS = (8, 10, 12, 15, 18)


def photo(name: str, size: int) -> torch.Tensor:
    return pil_to_tensor(resize_long_side(load_skimage(name), size))


def _symmetric_with_ridge(covariance: torch.Tensor, ridge: float) -> torch.Tensor:
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    return 0.5 * (covariance + covariance.transpose(-2, -1)) + ridge * eye


def w2_reference(
    target: torch.Tensor | FeatureMoments,
    features: torch.Tensor,
    mask: torch.Tensor | None = None,
    ridge: float = DEFAULT_RIDGE,
) -> torch.Tensor:
    """`W2StyleLoss(target, mask)(features)` in float64 with the cross term's root by eigh:
    the reference (differentiable by autograd; synchronises, for tests and benchmarks)."""
    if not isinstance(target, FeatureMoments):
        target = feature_moments(target.detach().double())
    moments = FeatureMoments(target.mean.double(), target.second_moment.double())
    style = _symmetric_with_ridge(moments.covariance(), ridge)
    mean, covariance = feature_mean_and_covariance(
        features.double(), None if mask is None else mask.double()
    )
    covariance = _symmetric_with_ridge(covariance, ridge)
    root = sqrtm_eigh(style)
    cross = torch.linalg.eigvalsh(root @ covariance @ root).clamp_min(0).sqrt().sum(-1)
    distance = (mean - moments.mean).square().sum(-1) + _trace(covariance) + _trace(style)
    return ((distance - 2 * cross) / features.shape[1]).mean()


def w2_before(
    target: torch.Tensor, features: torch.Tensor, num_iters: int = DEFAULT_NS_ITERATIONS
) -> torch.Tensor:
    """The W2 loss as computed before the closed-form gradient: the C x C cross term by
    `gaussian_w2_squared`, autograd through every Newton-Schulz iteration (no mask)."""
    moments = feature_moments(target.detach().double())
    style = _symmetric_with_ridge(moments.covariance(), DEFAULT_RIDGE)
    mean, covariance = feature_mean_and_covariance(features)
    covariance = _symmetric_with_ridge(covariance, DEFAULT_RIDGE)
    distance = gaussian_w2_squared(
        mean, covariance, moments.mean.float(), style.float(), sqrtm_eigh(style).float(), num_iters
    )
    return (distance / features.shape[1]).mean()


def time_loss(loss: torch.nn.Module, features: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of loss(features).backward()."""
    timings = []
    for _ in range(repeats + 1):
        leaf = features.detach().requires_grad_()
        start = time.perf_counter()
        loss(leaf).backward()
        timings.append((time.perf_counter() - start) * 1000)
    return sorted(timings[1:])[len(timings[1:]) // 2]  # first call is warm-up


def layer_features(
    names: tuple[str, ...], size: int, weights: str
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Synthesis (astronaut) and style (coffee) features at `names`, by layer index."""
    encoder = VGGFeatures(load_vgg19_features(weights), [LAYER_INDEX[name] for name in names])
    with torch.no_grad():
        return encoder(photo("astronaut", size)), encoder(photo("coffee", size))


def per_layer(args: argparse.Namespace) -> None:
    synthesis, style = layer_features(STYLE_LAYERS, args.size, args.weights)
    print(f"{args.size} px, {args.weights} weights, {torch.get_num_threads()} threads")
    print("layer      C    HW    gram ms   w2 ms   gram loss   w2 loss   w2/gram  w2(self)")
    totals = [0.0, 0.0, 0.0, 0.0]
    for name in STYLE_LAYERS:
        layer = LAYER_INDEX[name]
        gram, w2 = StyleLoss(style[layer]), W2StyleLoss(style[layer], num_iters=args.num_iters)
        features = synthesis[layer]
        gram_ms, w2_ms = (
            time_loss(gram, features, args.repeats),
            time_loss(w2, features, args.repeats),
        )
        with torch.no_grad():
            gram_value, w2_value = gram(features).item(), w2(features).item()
            floor = W2StyleLoss(features, num_iters=args.num_iters)(features).item()
        _, c, h, w = features.shape
        print(
            f"{name:8s} {c:4d} {h * w:5d} {gram_ms:9.2f} {w2_ms:8.2f} {gram_value:11.3e} "
            f"{w2_value:9.3e} {w2_value / gram_value:9.3e} {floor:9.2e}"
        )
        for index, value in enumerate((gram_ms, w2_ms, gram_value, w2_value)):
            totals[index] += value
    print(
        f"total (5 layers): gram {totals[0]:.1f} ms, w2 {totals[1]:.1f} ms; "
        f"summed losses gram {totals[2]:.3e}, w2 {totals[3]:.3e}, ratio {totals[3] / totals[2]:.3e}"
    )


def whole_config(size: int, statistic: str, weights: str) -> Config:
    """approach2, Adam, the suggested style weight of each statistic (conf/statistic)."""
    index = lambda names: [LAYER_INDEX[name] for name in names]  # noqa: E731
    cfg = Config(
        pair=PairConfig(name="bench", content="skimage:astronaut", style="skimage:coffee"),
        layers=LayersConfig(name="approach2", style=index(APPROACH2), content=index(APPROACH2_CONTENT)),
        image_size=size, style_loss=statistic, style_weight=1e6 if statistic == "gram" else 4.0,
    )  # fmt: skip
    cfg.model.weights = weights
    cfg.optim.name, cfg.optim.lr = "adam", 0.02
    return cfg


def whole_evaluation(args: argparse.Namespace) -> None:
    sources = SourceImages(load_skimage("astronaut"), [load_skimage("coffee")])
    steps = {
        name: build_synthesis(whole_config(args.size, name, args.weights), sources)
        .synthesis.enter_stage(0)
        .step
        for name in ("gram", "w2")
    }
    timings: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.repeats + 2):
        for name, step in steps.items():  # interleaved: load swings hit both alike
            start = time.perf_counter()
            step()
            if round_ >= 2:
                timings[name].append((time.perf_counter() - start) * 1000)
    print(
        f"{args.size} px, approach2, Adam, {args.weights} weights, {torch.get_num_threads()} threads"
    )
    for name, ms in timings.items():
        ms.sort()
        print(
            f"{name:5s} fastest {ms[0]:8.1f} ms  median {ms[len(ms) // 2]:8.1f} ms per evaluation"
        )
    print(f"w2 / gram: fastest {timings['w2'][0] / timings['gram'][0]:.2f}x")


def _relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference).norm() / reference.norm())


def _value_and_gradient(loss, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = features.detach().clone().requires_grad_()
    value = loss(leaf)
    (gradient,) = torch.autograd.grad(value, leaf)
    return value.detach(), gradient


def accuracy(args: argparse.Namespace) -> None:
    names = APPROACH2 + STYLE_LAYERS
    synthesis, style = layer_features(names, args.size, args.weights)
    print(f"{args.size} px, {args.weights} weights: relative error of loss / gradient vs eigh")
    header = " ".join(f"{f'{k} iters':>17s}" for k in ACCURACY_ITERATIONS)
    print(f"layer      C    HW   k  side   {header}  {'before (15)':>17s}")
    for name in names:
        layer = LAYER_INDEX[name]
        features, target = synthesis[layer], style[layer]
        ref_value, ref_gradient = _value_and_gradient(
            lambda leaf, target=target: w2_reference(target, leaf), features.double()
        )
        row = []
        for num_iters in (*ACCURACY_ITERATIONS, None):
            loss: Callable[[torch.Tensor], torch.Tensor] = W2StyleLoss(
                target, num_iters=num_iters or DEFAULT_NS_ITERATIONS
            )
            if num_iters is None:
                loss = partial(w2_before, target)
            value, gradient = _value_and_gradient(loss, features)
            row.append(
                f"{_relative(value, ref_value):8.1e}/{_relative(gradient, ref_gradient):8.1e}"
            )
        _, c, h, w = features.shape
        rank = W2StyleLoss(target).target_eigenvalues.shape[0]
        side = "small" if h * w + rank < c else "large"
        print(f"{name:8s} {c:4d} {h * w:5d} {rank:3d}  {side}  {' '.join(row)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--num-iters", type=int, default=W2Statistic().num_iters)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--whole", action="store_true", help="whole evaluations, Gram vs W2")
    mode.add_argument("--accuracy", action="store_true", help="W2 against eigh")
    args = parser.parse_args()
    (whole_evaluation if args.whole else accuracy if args.accuracy else per_layer)(args)


if __name__ == "__main__":
    main()
