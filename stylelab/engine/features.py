"""VGG-19 feature extraction: layer naming, weight loading and a truncated, frozen encoder."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from stylelab.errors import LayerError, WeightsError, first_line

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg19_layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for block, convs in enumerate((2, 2, 4, 4, 4), start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return tuple(names)


# Index i names the output of torchvision's `vgg19().features[i]`.
LAYER_NAMES: tuple[str, ...] = _vgg19_layer_names()
LAYER_INDEX: dict[str, int] = {name: index for index, name in enumerate(LAYER_NAMES)}


def parse_layer(layer: int | str) -> int:
    """A torchvision index (0..36, also as a string) or a name (`conv4_2`, `relu4_2`, `pool3`)."""
    text = str(layer).strip().lower()
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(LAYER_NAMES):
            return index
    elif text in LAYER_INDEX:
        return LAYER_INDEX[text]
    raise LayerError(
        f"unknown VGG-19 layer '{layer}': use an index 0..{len(LAYER_NAMES) - 1} "
        f"or a name ({', '.join(LAYER_NAMES)})"
    )


def parse_layers(layers: Iterable[int | str]) -> list[int]:
    """Parse a list of layers, keeping order; a layer given twice (by name or index) is an error."""
    given = list(layers)
    parsed = [parse_layer(layer) for layer in given]
    for position, index in enumerate(parsed):
        if index in parsed[:position]:
            raise LayerError(
                f"layer {layer_name(index)} (index {index}) is listed twice in {given}: "
                "give each layer once (weight it with the per-layer weights instead)"
            )
    return parsed


def layer_name(index: int) -> str:
    return LAYER_NAMES[index]


# VGG-19 ("configuration E"): output channels of each 3x3 convolution, "M" for a 2x2 max pool.
VGG19_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M")
VGG19_CONFIG += (512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def vgg19_layers() -> nn.Sequential:
    """VGG-19 `features` laid out (and default-initialised, in order) as torchvision's
    `vgg19().features`: built here because importing torchvision.models costs ~3 s per process."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG19_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [
                nn.Conv2d(channels, int(item), kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
            ]
            channels = int(item)
    return nn.Sequential(*layers)


def hub_checkpoint_path() -> Path:
    """Where torchvision keeps the ImageNet VGG-19 weights (under `$TORCH_HOME`)."""
    from torchvision.models import VGG19_Weights

    filename = os.path.basename(VGG19_Weights.IMAGENET1K_V1.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_vgg19_features(weights: str = "imagenet", seed: int = 0) -> nn.Sequential:
    """VGG-19 `features` with weights from `imagenet`, `random` or a local state-dict file."""
    if weights == "imagenet":
        from torchvision.models import VGG19_Weights

        try:
            # What torchvision's vgg19(weights=...) loads, through the same hub cache, without
            # building (and randomly initialising) its 120M-parameter classifier first.
            state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
            return _features_holding(
                {
                    k.removeprefix("features."): v
                    for k, v in state.items()
                    if k.startswith("features.")
                }
            )
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
            # urllib's URLError is an OSError; a corrupt cache file raises RuntimeError,
            # UnpicklingError or EOFError depending on how it is broken.
            raise WeightsError(
                f"could not load ImageNet VGG-19 weights ({type(error).__name__}: {first_line(error)}); "
                f"expected {hub_checkpoint_path().name} at {hub_checkpoint_path()} "
                "(set TORCH_HOME or download it there), or use model.weights=<path to a state dict> "
                "or model.weights=random for an offline smoke run"
            ) from None
    if weights == "random":
        log.warning(
            "USING RANDOM VGG-19 WEIGHTS (model.weights=random, seed %d): for tests and smoke "
            "runs only; results are not style transfer",
            seed,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _random_features()
    return _load_state_dict_file(Path(weights).expanduser())


def _random_features() -> nn.Sequential:
    """VGG-19 `features` initialised as torchvision initialises them (the classifier is skipped;
    the convolutions come first in torchvision's order, so the weights are the same)."""
    features = vgg19_layers()
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:  # VGG's convolutions all have one
                nn.init.zeros_(module.bias)
    return features


def _features_holding(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """VGG-19 `features` whose parameters are `state`'s tensors (keys as in `vgg19_layers()`),
    built on the meta device: no weights are initialised only to be replaced."""
    with torch.device("meta"):
        features = vgg19_layers()
    features.load_state_dict(state, strict=True, assign=True)
    return features


def _load_state_dict_file(path: Path) -> nn.Sequential:
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}; use model.weights=imagenet, random or an existing file"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad files
        raise WeightsError(
            f"could not read weights file {path} ({type(error).__name__}: {first_line(error)}): "
            "give a VGG-19 state dict saved with torch.save"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(
            f"{path} holds a {type(state).__name__}, not a state dict: give a VGG-19 state dict "
            "(keys like features.0.weight or 0.weight)"
        )
    # Only the convolutional part: building (and initialising) the 120M-parameter classifier
    # just to drop it took over a second per load.
    features = vgg19_layers()
    feature_state = {
        key.removeprefix("features."): value
        for key, value in state.items()
        if isinstance(key, str) and (key.startswith("features.") or key[:1].isdigit())
    }
    expected = list(features.state_dict())
    missing = [key for key in expected if key not in feature_state]
    unexpected = [key for key in feature_state if key not in expected]
    detail = ""
    if missing or unexpected:
        detail = (
            f"{len(missing)} of {len(expected)} VGG-19 feature keys missing"
            + (f", e.g. {', '.join(missing[:3])}" if missing else "")
            + f"; {len(unexpected)} unexpected"
            + (f", e.g. {', '.join(unexpected[:3])}" if unexpected else "")
        )
    else:
        try:
            features.load_state_dict(feature_state, strict=True)
        except (RuntimeError, TypeError, ValueError, AttributeError) as error:  # bad shapes
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else first_line(error)
    if detail:
        raise WeightsError(
            f"{path} is not a VGG-19 state dict ({detail}): give a VGG-19 state dict "
            "(keys like features.0.weight or 0.weight)"
        )
    return features


class VGGFeatures(nn.Module):
    """Frozen VGG-19 truncated after the deepest requested layer; returns the requested outputs.

    Input images are (N, 3, H, W) in [0, 1]; ImageNet normalisation happens inside.
    """

    mean: torch.Tensor  # buffers: ImageNet's mean and std, (1, 3, 1, 1)
    std: torch.Tensor

    def __init__(self, features: nn.Sequential, layers: Sequence[int], pooling: str = "max"):
        super().__init__()
        if not layers:
            raise LayerError("no layers selected: give at least one style or content layer")
        if pooling not in ("max", "avg"):
            raise LayerError(f"unknown pooling '{pooling}': use max or avg")
        self.layers = sorted(set(layers))
        modules = list(features.children())[: self.layers[-1] + 1]
        for index, module in enumerate(modules):
            if isinstance(module, nn.ReLU):
                modules[index] = nn.ReLU(inplace=False)
            elif isinstance(module, nn.MaxPool2d) and pooling == "avg":
                modules[index] = nn.AvgPool2d(kernel_size=2, stride=2)
        self.net = nn.Sequential(*modules).eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @property
    def min_size(self) -> int:
        """Smallest image side for which every requested layer has at least one pixel."""
        pools = sum(
            1
            for index, name in enumerate(LAYER_NAMES[: self.layers[-1] + 1])
            if name.startswith("pool")
        )
        return 2**pools

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # always eval: no dropout or batch-norm statistics to update

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        x = (image - self.mean) / self.std
        outputs: dict[int, torch.Tensor] = {}
        wanted = set(self.layers)
        for index, module in enumerate(self.net):
            x = module(x)
            if index in wanted:
                outputs[index] = x
        return outputs
