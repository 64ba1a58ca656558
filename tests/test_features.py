"""VGG-19 layer naming, weight loading and the truncated, frozen feature encoder."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.models
from torch import nn

from stylelab.engine.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_NAMES,
    VGGFeatures,
    hub_checkpoint_path,
    layer_name,
    load_vgg19_features,
    parse_layer,
    parse_layers,
)
from stylelab.errors import LayerError, WeightsError

HUB_FILE = "vgg19-dcbb9e9d.pth"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def random_features() -> nn.Sequential:
    """torchvision's VGG-19 `features` with seeded random weights (seed 0), shared read-only."""
    return load_vgg19_features("random", seed=0)


@pytest.fixture(scope="module")
def feature_state(random_features: nn.Sequential) -> dict[str, torch.Tensor]:
    """A VGG-19 `features` state dict with seeded random values unlike any default init."""
    generator = torch.Generator().manual_seed(123)
    shapes = {key: value.shape for key, value in random_features.state_dict().items()}
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def assert_state_equal(features: nn.Sequential, state: dict[str, torch.Tensor]) -> None:
    loaded = features.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def assert_one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, repr(message)
    return message


# --- layer names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "index"),
    [
        (0, 0),
        ("0", 0),
        (" 21 ", 21),
        (36, 36),
        ("conv1_1", 0),
        ("relu1_1", 1),
        ("pool1", 4),
        ("conv2_1", 5),
        ("pool3", 18),
        ("conv4_1", 19),
        ("conv4_2", 21),
        ("relu4_2", 22),
        ("conv4_4", 25),
        ("conv5_1", 28),
        ("CONV5_1", 28),
        ("relu5_4", 35),
        ("pool5", 36),
    ],
)
def test_parse_layer(layer: int | str, index: int) -> None:
    """Indices (int or str) pass through; names map to torchvision indices."""
    assert parse_layer(layer) == index


@pytest.mark.parametrize(
    "layer", [-1, 37, "37", "-1", "conv6_1", "conv1_3", "relu", "", "1.5", "pool"]
)
def test_parse_layer_invalid(layer: int | str) -> None:
    """Unknown layers raise a one-line LayerError listing the valid names."""
    with pytest.raises(LayerError) as info:
        parse_layer(layer)
    message = assert_one_line(info.value)
    assert f"'{layer}'" in message
    assert "0..36" in message
    for name in ("conv1_1", "relu4_2", "pool3", "conv5_4", "pool5"):
        assert name in message


def test_layer_names_match_torchvision_modules(random_features: nn.Sequential) -> None:
    """conv/relu/pool names line up with Conv2d/ReLU/MaxPool2d in torchvision's vgg19()."""
    modules = list(random_features.children())
    assert len(LAYER_NAMES) == len(modules) == 37
    kinds = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}
    for index, (name, module) in enumerate(zip(LAYER_NAMES, modules, strict=True)):
        assert isinstance(module, kinds[name[:4]]), (index, name, module)
        assert layer_name(index) == name
    assert [LAYER_NAMES[i] for i in (0, 5, 10, 19, 28)] == [
        "conv1_1",
        "conv2_1",
        "conv3_1",
        "conv4_1",
        "conv5_1",
    ]


def test_parse_layers_keeps_order_and_refuses_duplicates() -> None:
    """Order is kept; a layer given twice (by name or index) is an error naming it."""
    assert parse_layers(["conv2_1", 0, "relu1_1"]) == [5, 0, 1]
    assert parse_layers([]) == []
    with pytest.raises(LayerError, match=r"conv1_1 \(index 0\) is listed twice"):
        parse_layers(["conv2_1", 0, "conv1_1"])
    with pytest.raises(LayerError):
        parse_layers([0, "conv9_9"])


# --- VGGFeatures --------------------------------------------------------------------------------


def test_encoder_truncated_after_deepest_layer(random_features: nn.Sequential) -> None:
    """The net keeps modules 0..max(layers) and nothing deeper."""
    encoder = VGGFeatures(random_features, [10, 0, 10])
    assert encoder.layers == [0, 10]
    assert len(encoder.net) == 11
    assert isinstance(encoder.net[-1], nn.Conv2d)
    assert len(VGGFeatures(random_features, [36]).net) == 37


def test_encoder_no_inplace_relu_and_original_untouched(random_features: nn.Sequential) -> None:
    """ReLUs are out-of-place (features stay valid), also if the source used in-place ones."""
    source = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
    encoder = VGGFeatures(source, [0, 1])
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in encoder.modules())
    outputs = encoder(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert (outputs[0] < 0).any()  # the conv output was not clamped by a later in-place ReLU
    torch.testing.assert_close(outputs[1], outputs[0].clamp_min(0))
    encoder = VGGFeatures(random_features, [28])
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in encoder.modules())


def test_encoder_frozen_and_always_eval(random_features: nn.Sequential) -> None:
    """No parameter requires grad; .train() leaves it (and its children) in eval mode."""
    encoder = VGGFeatures(random_features, [0, 5])
    assert all(not p.requires_grad for p in encoder.parameters())
    assert encoder.train() is encoder
    assert not encoder.training
    assert not any(module.training for module in encoder.modules())
    encoder.train(True)
    assert not any(module.training for module in encoder.modules())


def test_encoder_returns_exactly_requested_layers(random_features: nn.Sequential) -> None:
    """The output dict holds the requested layers, with the expected shapes."""
    encoder = VGGFeatures(random_features, [21, 0, 5, 18])
    outputs = encoder(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert sorted(outputs) == [0, 5, 18, 21]
    assert outputs[0].shape == (2, 64, 32, 32)
    assert outputs[5].shape == (2, 128, 16, 16)
    assert outputs[18].shape == (2, 256, 4, 4)
    assert outputs[21].shape == (2, 512, 4, 4)


def test_encoder_normalises_with_imagenet_statistics(random_features: nn.Sequential) -> None:
    """Layer 0 equals conv1_1 applied to (image - mean) / std; deeper layers follow torchvision."""
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    encoder = VGGFeatures(random_features, [0, 10])
    outputs = encoder(image)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (image - mean) / std
    conv = random_features[0]
    torch.testing.assert_close(outputs[0], F.conv2d(normalised, conv.weight, conv.bias, padding=1))
    with torch.no_grad():
        expected = random_features[:11](normalised.clone())
    torch.testing.assert_close(outputs[10], expected)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_encoder_passes_gradients_to_the_image(random_features: nn.Sequential) -> None:
    """Frozen weights, but the image gets a gradient; the input is not modified."""
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    copy = image.clone()
    image.requires_grad_(True)
    VGGFeatures(random_features, [5])(image)[5].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert torch.equal(image.detach(), copy)


@pytest.mark.parametrize(
    ("layers", "size"),
    [([0], 1), ([3], 1), ([4], 2), ([5], 2), ([10, 0], 4), ([25], 8), ([0, 28], 16), ([36], 32)],
)
def test_encoder_min_size(random_features: nn.Sequential, layers: list[int], size: int) -> None:
    """min_size = 2 ** (pools up to the deepest layer); an image that small still works."""
    encoder = VGGFeatures(random_features, layers)
    assert encoder.min_size == size
    outputs = encoder(torch.rand(1, 3, size, size))
    assert all(out.shape[-1] >= 1 and out.shape[-2] >= 1 for out in outputs.values())


def test_encoder_avg_pooling(random_features: nn.Sequential) -> None:
    """pooling='avg' swaps every max pool for 2x2 average pooling; 'max' keeps them."""
    avg = VGGFeatures(random_features, [3, 4, 9], pooling="avg")
    pools = [avg.net[i] for i in (4, 9)]
    assert all(isinstance(p, nn.AvgPool2d) for p in pools)
    assert not any(isinstance(m, nn.MaxPool2d) for m in avg.modules())
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    outputs = avg(image)
    torch.testing.assert_close(outputs[4], F.avg_pool2d(outputs[3], 2))
    assert outputs[9].shape[-1] == 2
    max_outputs = VGGFeatures(random_features, [3, 4])(image)
    torch.testing.assert_close(max_outputs[4], F.max_pool2d(max_outputs[3], 2))
    assert not torch.allclose(outputs[4], max_outputs[4])


def test_encoder_rejects_bad_arguments(random_features: nn.Sequential) -> None:
    """No layers, or an unknown pooling, raise LayerError."""
    with pytest.raises(LayerError, match="no layers"):
        VGGFeatures(random_features, [])
    with pytest.raises(LayerError, match="pooling 'min'"):
        VGGFeatures(random_features, [0], pooling="min")


# --- weights ------------------------------------------------------------------------------------


def test_random_weights_seeded_and_loud(
    random_features: nn.Sequential, caplog: pytest.LogCaptureFixture
) -> None:
    """Same seed -> identical weights, another seed -> different; global RNG untouched;
    each load logs a warning naming the seed."""
    before = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="stylelab.engine.features"):
        again = load_vgg19_features("random", seed=0)
        assert torch.equal(torch.random.get_rng_state(), before)
        other = load_vgg19_features("random", seed=7)
    assert_state_equal(again, random_features.state_dict())
    assert not torch.equal(other[0].weight, random_features[0].weight)
    assert not torch.equal(other[34].weight, random_features[34].weight)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2
    assert all("RANDOM VGG-19 WEIGHTS" in message for message in warnings)
    assert "seed 0" in warnings[0] and "seed 7" in warnings[1]


def test_state_dict_file_full_vgg19(tmp_path: Path, feature_state: dict[str, torch.Tensor]) -> None:
    """A whole vgg19 state dict (features.N.*, classifier.*) loads its feature weights."""
    full = {f"features.{key}": value for key, value in feature_state.items()}
    full["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path / "vgg19 full.pth"
    torch.save(full, path)
    assert_state_equal(load_vgg19_features(str(path)), feature_state)


def test_state_dict_file_features_only(
    tmp_path: Path, feature_state: dict[str, torch.Tensor]
) -> None:
    """A features-only state dict (N.weight keys), also wrapped in {'state_dict': ...}."""
    path = tmp_path / "features.pth"
    torch.save(feature_state, path)
    assert_state_equal(load_vgg19_features(str(path)), feature_state)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": feature_state}, wrapped)
    assert_state_equal(load_vgg19_features(str(wrapped)), feature_state)


def test_state_dict_file_home_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, feature_state: dict[str, torch.Tensor]
) -> None:
    """`~/...` paths are expanded."""
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save(feature_state, tmp_path / "w.pth")
    assert_state_equal(load_vgg19_features("~/w.pth"), feature_state)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"fc.weight": torch.zeros(2, 2)}, "not a VGG-19 state dict"),  # another network
        ({"0.weight": torch.zeros(3, 3, 3, 3)}, "not a VGG-19 state dict"),  # keys missing
        (torch.zeros(3), "not a state dict"),  # a tensor
        ([1, 2, 3], "not a state dict"),  # a list
        ({"": torch.zeros(1), 3: torch.zeros(1)}, "not a VGG-19 state dict"),  # odd keys
    ],
)
def test_state_dict_file_wrong_content(tmp_path: Path, content: object, match: str) -> None:
    """Files torch can read but that hold no VGG-19 give a one-line WeightsError."""
    path = tmp_path / "wrong.pth"
    torch.save(content, path)
    with pytest.raises(WeightsError, match=match) as info:
        load_vgg19_features(str(path))
    assert str(path) in assert_one_line(info.value)


def test_state_dict_file_wrong_shapes(
    tmp_path: Path, feature_state: dict[str, torch.Tensor]
) -> None:
    """Right keys, wrong shapes: a one-line WeightsError naming the layer."""
    state = dict(feature_state)
    state["0.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "shapes.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"0\.weight") as info:
        load_vgg19_features(str(path))
    assert_one_line(info.value)


@pytest.mark.parametrize("data", [b"", b"not a checkpoint at all\n", b"\x80\x02}q\x00(X\x01"])
def test_state_dict_file_unreadable(tmp_path: Path, data: bytes) -> None:
    """Empty, text or truncated-pickle files give a one-line WeightsError naming the file."""
    path = tmp_path / "broken.pth"
    path.write_bytes(data)
    with pytest.raises(WeightsError) as info:
        load_vgg19_features(str(path))
    message = assert_one_line(info.value)
    assert str(path) in message


def test_state_dict_file_rejects_pickled_objects(tmp_path: Path) -> None:
    """Arbitrary pickles are refused (weights_only), with a one-line message."""
    path = tmp_path / "object.pth"
    torch.save({"layer": nn.Linear(1, 1)}, path)
    with pytest.raises(WeightsError) as info:
        load_vgg19_features(str(path))
    assert "\x1b" not in assert_one_line(info.value)


def test_state_dict_file_missing(tmp_path: Path) -> None:
    """A missing file (or a folder) raises WeightsError naming it and the alternatives."""
    for path in (tmp_path / "nope.pth", tmp_path):
        with pytest.raises(WeightsError, match="not found") as info:
            load_vgg19_features(str(path))
        message = assert_one_line(info.value)
        assert str(path) in message
        assert "random" in message and "imagenet" in message


# --- the ImageNet weights through the torch hub cache --------------------------------------------


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; torch.hub reads it at each call unless set_dir was used, so reset that."""
    home = tmp_path / "torch home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return home


def test_hub_checkpoint_path_follows_torch_home(torch_home: Path) -> None:
    """$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth."""
    assert hub_checkpoint_path() == torch_home / "hub" / "checkpoints" / HUB_FILE


def test_imagenet_weights_from_hub_cache(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch, feature_state: dict[str, torch.Tensor]
) -> None:
    """A checkpoint in the hub cache is what `imagenet` loads; nothing is downloaded."""
    full = {f"features.{key}": value for key, value in feature_state.items()}
    # A complete vgg19() state dict; the big classifier tensors are stride-0 views so the file
    # stays a few kB per tensor instead of 500 MB.
    shapes = {"0": (4096, 25088), "3": (4096, 4096), "6": (1000, 4096)}
    for index, (rows, cols) in shapes.items():
        full[f"classifier.{index}.weight"] = torch.zeros(1).expand(rows, cols)
        full[f"classifier.{index}.bias"] = torch.zeros(rows)
    checkpoint = torch_home / "hub" / "checkpoints" / HUB_FILE
    checkpoint.parent.mkdir(parents=True)
    torch.save(full, checkpoint)

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"tried to download {args}")

    def no_classifier(*args: object, **kwargs: object) -> None:
        raise AssertionError("built torchvision's whole VGG-19 (its classifier too)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torchvision.models, "vgg19", no_classifier)
    assert_state_equal(load_vgg19_features("imagenet"), feature_state)


def test_imagenet_weights_offline_without_file(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cached file and no network: a one-line WeightsError with the path and the alternatives."""
    calls: list[tuple[str, str]] = []

    def offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
        calls.append((url, dst))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = torch_home / "hub" / "checkpoints" / HUB_FILE
    with pytest.raises(WeightsError) as info:
        load_vgg19_features("imagenet")
    assert calls and calls[0][0].endswith(HUB_FILE) and Path(calls[0][1]) == expected
    message = assert_one_line(info.value)
    assert str(expected) in message
    assert "model.weights=random" in message
    assert "model.weights=<path" in message
    assert "URLError" in message


@pytest.mark.parametrize("data", [b"this is not a checkpoint", b"\x80\x02}q\x00(X\x01"])
def test_imagenet_weights_corrupt_cache_file(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    """A corrupt file in the hub cache gives a one-line WeightsError, not a pickle traceback."""
    checkpoint = torch_home / "hub" / "checkpoints" / HUB_FILE
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(data)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: None)
    with pytest.raises(WeightsError) as info:
        load_vgg19_features("imagenet")
    assert str(checkpoint) in assert_one_line(info.value)
