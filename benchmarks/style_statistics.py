"""Gram vs W2 style statistics on real VGG-19 features: cost per evaluation and loss scale.

    python -m benchmarks.style_statistics [--size 256] [--repeats 5] [--weights random]

Reports, per style layer, milliseconds for loss + backward (from features that require grad,
so the VGG pass is excluded) and the ratio W2 / Gram of the unweighted losses between two
scikit-image photos (astronaut as synthesis, coffee as style), plus the W2 value at identical
features (its Newton-Schulz floor).
"""

from __future__ import annotations

import argparse
import time

import torch

from stylelab.engine.features import LAYER_INDEX, VGGFeatures, load_vgg19_features
from stylelab.engine.images import pil_to_tensor, resize_long_side
from stylelab.engine.losses import StyleLoss
from stylelab.engine.sources import load_skimage
from stylelab.engine.statistics import W2StyleLoss

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def photo(name: str, size: int) -> torch.Tensor:
    return pil_to_tensor(resize_long_side(load_skimage(name), size))


def time_loss(loss: torch.nn.Module, features: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of loss(features).backward()."""
    timings = []
    for _ in range(repeats + 1):
        leaf = features.detach().requires_grad_()
        start = time.perf_counter()
        loss(leaf).backward()
        timings.append((time.perf_counter() - start) * 1000)
    return sorted(timings[1:])[len(timings[1:]) // 2]  # first call is warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--num-iters", type=int, default=15)
    args = parser.parse_args()
    layers = [LAYER_INDEX[name] for name in STYLE_LAYERS]
    encoder = VGGFeatures(load_vgg19_features(args.weights), layers)
    with torch.no_grad():
        synthesis = encoder(photo("astronaut", args.size))
        style = encoder(photo("coffee", args.size))
    print(f"{args.size} px, {args.weights} weights, {torch.get_num_threads()} threads")
    print("layer      C    HW    gram ms   w2 ms   gram loss   w2 loss   w2/gram  w2(self)")
    totals = [0.0, 0.0, 0.0, 0.0]
    for name, layer in zip(STYLE_LAYERS, layers, strict=True):
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


if __name__ == "__main__":
    main()
