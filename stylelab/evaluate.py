"""`python -m stylelab.evaluate IMAGE --content C --style S [...]` or `... RUN_DIR`: the
evaluation protocol's metrics of any image (README "Comparing runs") as JSON on stdout.

With a run folder the inputs, blend, masks, weights, seed, size and device come from its
config.yaml and the image is its final.png: the numbers are those of its summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import cast

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stylelab.config import Config, PairConfig
from stylelab.engine.device import resolve_device
from stylelab.errors import StyleLabError, first_line
from stylelab.evaluating import Metrics, build_evaluator, evaluate_file, read_image
from stylelab.run_folder import CONFIG_FILE, FINAL_IMAGE


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stylelab.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("image", help="an image file, or a run folder (its final.png)")
    parser.add_argument("--content", help="the content image (path, skimage:<name> or URL)")
    parser.add_argument("--style", action="append", help="a style image; repeat for a blend")
    parser.add_argument("--blend", type=float, nargs="+", help="one weight per style")
    parser.add_argument("--weights", help="VGG-19 weights: imagenet (default), random or a file")
    parser.add_argument("--seed", type=int, help="seed of random weights (default 0)")
    parser.add_argument("--size", type=int, help="evaluation size: the content's long side "
                        "(default: the image's long side; a run's image_size)")  # fmt: skip
    parser.add_argument("--device", help="auto, cpu, cuda, ... (default: auto; a run's device)")
    return parser.parse_args(argv)


def run_config(run_dir: Path) -> Config:
    """A run folder's config.yaml on the schema's defaults (older runs lack newer keys)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise StyleLabError(f"{run_dir} holds no {CONFIG_FILE}: give a stylelab run folder")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
        return cast(Config, OmegaConf.to_object(merged))  # merged into a structured Config
    except (OmegaConfBaseException, ValueError, OSError) as error:
        raise StyleLabError(
            f"cannot read {path} ({first_line(error)}): give a stylelab run folder"
        ) from None


def evaluate(args: argparse.Namespace) -> Metrics:
    target = Path(args.image).expanduser()
    if target.is_dir():
        cfg, image = run_config(target), target / FINAL_IMAGE
        size = args.size or cfg.image_size
        if args.content or args.style or args.blend:
            raise StyleLabError("a run folder brings its own inputs: leave out --content, "
                                "--style and --blend")  # fmt: skip
    else:
        if not args.content or not args.style:
            raise StyleLabError("give --content and --style (or a run folder instead of an image)")
        cfg = Config(pair=PairConfig("evaluate", args.content, list(args.style), args.blend))
        image = target
        size = args.size or max(read_image(image).shape[-2:])
    cfg.model.weights = args.weights or cfg.model.weights
    cfg.seed = cfg.seed if args.seed is None else args.seed
    if size < 1:
        raise StyleLabError(f"--size {size}: give a positive number of pixels")
    read_image(image)  # a missing or corrupt image is named before any model loads
    evaluator = build_evaluator(cfg, resolve_device(args.device or cfg.device), size=size)
    return evaluate_file(evaluator, image)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = parse_args(argv)
    try:
        metrics = evaluate(args)
    except (StyleLabError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
