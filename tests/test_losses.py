"""Gatys losses: Gram matrices, content/style/TV losses and their weighted sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stylelab.engine.features import VGGFeatures
from stylelab.engine.losses import ContentLoss, StyleLoss, TVLoss, gram_matrix
from stylelab.engine.objective import Objective, gatys_objective

STYLE_LAYERS = [0, 5]  # conv1_1, conv2_1
CONTENT_LAYERS = [25]  # conv4_4


pytestmark = pytest.mark.usefixtures("one_thread")


def mini_vgg(width: int = 8, seed: int = 0) -> nn.Sequential:
    """VGG-19's `features` topology (37 modules, same indices, torchvision's init), `width` wide."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules: list[nn.Module] = []
        channels = 3
        for convs in (2, 2, 4, 4, 4):
            for _ in range(convs):
                conv = nn.Conv2d(channels, width, 3, padding=1)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
                modules += [conv, nn.ReLU(inplace=True)]
                channels = width
            modules.append(nn.MaxPool2d(2, 2))
    assert len(modules) == 37
    return nn.Sequential(*modules)


class CountingEncoder(VGGFeatures):
    """A VGGFeatures that counts its forward calls."""

    calls = 0

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        self.calls += 1
        return super().forward(image)


@pytest.fixture
def encoder() -> VGGFeatures:
    return VGGFeatures(mini_vgg(), STYLE_LAYERS + CONTENT_LAYERS)


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Content, style and a third image to evaluate, each (1, 3, 16, 16)."""
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.rand(1, 3, 16, 16, generator=generator) for _ in range(3))  # type: ignore[return-value]


def make_loss(
    encoder: VGGFeatures, images: tuple[torch.Tensor, ...], **kwargs: object
) -> Objective:
    content, style, _ = images
    return gatys_objective(encoder, content, style, CONTENT_LAYERS, STYLE_LAYERS, **kwargs)  # type: ignore[arg-type]


# --- gram_matrix, ContentLoss, StyleLoss, TVLoss against hand-computed values -------------------

# channel 0 = [1, 2, 3, 4], channel 1 = [0, 1, 0, -1]
SMALL = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -1.0]]]])
# G = [[30, -2], [-2, 2]] / (C*H*W = 8)
SMALL_GRAM = torch.tensor([[[3.75, -0.25], [-0.25, 0.25]]])


def test_gram_matrix_hand_computed() -> None:
    """Gram of a 1x2x2x2 tensor, divided by C*H*W."""
    gram = gram_matrix(SMALL)
    assert gram.shape == (1, 2, 2)
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram, SMALL_GRAM)


def test_gram_matrix_batch_and_symmetry() -> None:
    """Each batch item gets its own symmetric Gram matrix, normalised by C*H*W (not N)."""
    features = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    gram = gram_matrix(features)
    assert gram.shape == (3, 5, 5)
    for i in range(3):
        flat = features[i].reshape(5, -1)
        torch.testing.assert_close(gram[i], flat @ flat.T / (5 * 4 * 6))
    torch.testing.assert_close(gram, gram.transpose(1, 2))


def test_gram_matrix_bf16_is_fp32() -> None:
    """bf16 features give an fp32 Gram computed from the fp32 values of the features."""
    features = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    expected = gram_matrix(features.float())
    gram = gram_matrix(features)
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram, expected, rtol=1e-6, atol=1e-7)


def test_gram_matrix_fp32_under_bf16_autocast() -> None:
    """Autocast (as the bf16 synthesis uses) must not push the Gram matmul down to bf16."""
    features = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = gram_matrix(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram = gram_matrix(features)
        gram_bf16_input = gram_matrix(features.bfloat16())
    assert gram.dtype == torch.float32
    assert gram_bf16_input.dtype == torch.float32
    torch.testing.assert_close(gram, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        gram_bf16_input, gram_matrix(features.bfloat16()), rtol=1e-6, atol=1e-7
    )


def test_content_loss_hand_computed() -> None:
    """MSE over feature maps: diffs (1, 0, 2, 0) -> (1 + 4) / 4."""
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    features = torch.tensor([[[[2.0, 2.0], [5.0, 4.0]]]])
    loss = ContentLoss(target)
    assert loss(features).item() == pytest.approx(1.25)
    assert loss(target).item() == 0.0
    assert not loss.target.requires_grad


def test_content_loss_keeps_a_copy_of_fp32_target() -> None:
    """The target is stored as fp32 and bf16 features give an fp32 loss."""
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).bfloat16()
    loss = ContentLoss(target)
    assert loss.target.dtype == torch.float32
    value = loss(torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_style_loss_hand_computed() -> None:
    """MSE between Grams: target Gram SMALL_GRAM, features with Gram [[1/8, 0], [0, 0]]."""
    loss = StyleLoss(SMALL)
    torch.testing.assert_close(loss.target, SMALL_GRAM)
    features = torch.zeros(1, 2, 2, 2)
    features[0, 0, 0, 0] = 1.0
    expected = ((3.75 - 0.125) ** 2 + 3 * 0.25**2) / 4  # 3.33203125
    assert loss(features).item() == pytest.approx(expected)
    assert loss(SMALL).item() == 0.0


def test_style_loss_batch_is_compared_to_the_one_target() -> None:
    """A batch of two identical feature maps has the same loss as one."""
    loss = StyleLoss(SMALL)
    features = torch.randn(1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    assert loss(features.expand(2, -1, -1, -1)).item() == pytest.approx(loss(features).item())


def test_style_loss_ignores_spatial_arrangement() -> None:
    """Gram matrices do not see where things are: a shuffled map has zero style loss."""
    features = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    shuffled = features.reshape(1, 3, 16)[..., torch.randperm(16)].reshape(1, 3, 4, 4)
    assert StyleLoss(features)(shuffled).item() == pytest.approx(0.0, abs=1e-6)


def test_tv_loss_hand_computed() -> None:
    """[[0, 1, 3], [2, 2, 2]]: mean |dx| = 3/4, mean |dy| = 4/3, TV = their average."""
    image = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])
    assert TVLoss()(image).item() == pytest.approx(0.5 * (0.75 + 4 / 3))


def test_tv_loss_constant_image_is_zero_and_checkerboard_is_one() -> None:
    """No variation gives 0; a 0/1 checkerboard gives the maximum, 1."""
    assert TVLoss()(torch.full((1, 3, 5, 7), 0.3)).item() == 0.0
    checker = (torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2
    assert TVLoss()(checker.float().expand(1, 3, 6, 6)).item() == pytest.approx(1.0)


# --- the Gatys objective --------------------------------------------------------------------------------


def test_gatys_loss_keys(encoder: VGGFeatures, images: tuple[torch.Tensor, ...]) -> None:
    """total/content/style/tv and one entry per layer named after the layer."""
    terms = make_loss(encoder, images, tv_weight=1.0)(images[2])
    assert set(terms) == {
        "total",
        "content",
        "style",
        "tv",
        "style/conv1_1",
        "style/conv2_1",
        "content/conv4_4",
    }
    assert all(value.dim() == 0 for value in terms.values())


def test_gatys_loss_components_add_up(
    encoder: VGGFeatures, images: tuple[torch.Tensor, ...]
) -> None:
    """Per-layer terms sum to their kind; content + style + tv = total; all non-trivial."""
    terms = make_loss(encoder, images, content_weight=2.0, style_weight=1e3, tv_weight=0.5)(
        images[2]
    )
    style = terms["style/conv1_1"] + terms["style/conv2_1"]
    torch.testing.assert_close(terms["style"], style)
    torch.testing.assert_close(terms["content"], terms["content/conv4_4"])
    torch.testing.assert_close(terms["total"], terms["content"] + terms["style"] + terms["tv"])
    for key in ("content", "style/conv1_1", "style/conv2_1", "tv"):
        assert terms[key].item() > 0, key


def test_gatys_loss_terms_match_independent_computation(
    encoder: VGGFeatures, images: tuple[torch.Tensor, ...]
) -> None:
    """Each weighted term equals weight * MSE recomputed from the encoder's features."""
    content, style, image = images
    terms = make_loss(encoder, images, content_weight=3.0, style_weight=100.0, tv_weight=0.25)(
        image
    )
    with torch.no_grad():
        fc, fs, fi = encoder(content), encoder(style), encoder(image)
    for index, name in ((0, "conv1_1"), (5, "conv2_1")):
        expected = 100.0 * F.mse_loss(gram_matrix(fi[index]), gram_matrix(fs[index]))
        torch.testing.assert_close(terms[f"style/{name}"], expected)
    torch.testing.assert_close(terms["content/conv4_4"], 3.0 * F.mse_loss(fi[25], fc[25]))
    torch.testing.assert_close(terms["tv"], 0.25 * TVLoss()(image))


def test_gatys_loss_weights_scale_linearly(
    encoder: VGGFeatures, images: tuple[torch.Tensor, ...]
) -> None:
    """Doubling style_weight x10 multiplies style by 10 and leaves content alone; same for the rest."""
    image = images[2]
    base = make_loss(encoder, images, content_weight=1.0, style_weight=1.0, tv_weight=1.0)(image)
    style10 = make_loss(encoder, images, content_weight=1.0, style_weight=10.0, tv_weight=1.0)(
        image
    )
    content5 = make_loss(encoder, images, content_weight=5.0, style_weight=1.0, tv_weight=1.0)(
        image
    )
    tv7 = make_loss(encoder, images, content_weight=1.0, style_weight=1.0, tv_weight=7.0)(image)
    torch.testing.assert_close(style10["style"], 10 * base["style"])
    torch.testing.assert_close(style10["style/conv2_1"], 10 * base["style/conv2_1"])
    torch.testing.assert_close(style10["content"], base["content"])
    torch.testing.assert_close(style10["tv"], base["tv"])
    torch.testing.assert_close(content5["content"], 5 * base["content"])
    torch.testing.assert_close(content5["style"], base["style"])
    torch.testing.assert_close(tv7["tv"], 7 * base["tv"])


def test_gatys_loss_zero_tv_weight(encoder: VGGFeatures, images: tuple[torch.Tensor, ...]) -> None:
    """tv_weight=0 gives tv exactly 0 and total = content + style."""
    terms = make_loss(encoder, images, tv_weight=0.0)(images[2])
    assert terms["tv"].item() == 0.0
    torch.testing.assert_close(terms["total"], terms["content"] + terms["style"])


def test_gatys_loss_per_layer_weights(
    encoder: VGGFeatures, images: tuple[torch.Tensor, ...]
) -> None:
    """style_layer_weights multiply each layer's term; content_layer_weights likewise."""
    image = images[2]
    base = make_loss(encoder, images)(image)
    weighted = make_loss(
        encoder, images, style_layer_weights=[2.0, 0.5], content_layer_weights=[3.0]
    )(image)
    torch.testing.assert_close(weighted["style/conv1_1"], 2.0 * base["style/conv1_1"])
    torch.testing.assert_close(weighted["style/conv2_1"], 0.5 * base["style/conv2_1"])
    torch.testing.assert_close(
        weighted["style"], 2.0 * base["style/conv1_1"] + 0.5 * base["style/conv2_1"]
    )
    torch.testing.assert_close(weighted["content"], 3.0 * base["content"])
    empty = make_loss(encoder, images, style_layer_weights=[])(image)  # empty list = all ones
    torch.testing.assert_close(empty["style"], base["style"])


def test_gatys_loss_wrong_number_of_layer_weights(
    encoder: VGGFeatures, images: tuple[torch.Tensor, ...]
) -> None:
    """As many layer weights as layers, or a ValueError saying so."""
    with pytest.raises(ValueError, match="3 style layer weights given for 2 style layers"):
        make_loss(encoder, images, style_layer_weights=[1.0, 1.0, 1.0])


def test_gatys_loss_targets_computed_once(images: tuple[torch.Tensor, ...]) -> None:
    """Two encoder calls at construction (content, style), then one per evaluation."""
    encoder = CountingEncoder(mini_vgg(), STYLE_LAYERS + CONTENT_LAYERS)
    loss = make_loss(encoder, images)
    assert encoder.calls == 2
    loss(images[2])
    loss(images[2])
    assert encoder.calls == 4


def test_gatys_loss_targets_do_not_follow_input_changes(
    encoder: VGGFeatures, images: tuple[torch.Tensor, ...]
) -> None:
    """Changing the content/style tensors in place after construction changes nothing."""
    content, style, image = (tensor.clone() for tensor in images)
    loss = gatys_objective(encoder, content, style, CONTENT_LAYERS, STYLE_LAYERS, tv_weight=1.0)
    before = loss(image)
    content.mul_(0.5)
    style.fill_(1.0)
    after = loss(image)
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, msg=key)


def test_gatys_loss_zero_at_targets(encoder: VGGFeatures, images: tuple[torch.Tensor, ...]) -> None:
    """The content image has zero content loss; the style image has zero style loss."""
    content, style, _ = images
    loss = make_loss(encoder, images)
    assert loss(content)["content"].item() == 0.0
    assert loss(style)["style"].item() == pytest.approx(0.0, abs=1e-12)
    assert loss(content)["style"].item() > 0
    assert loss(style)["content"].item() > 0


def test_gatys_loss_gradient_reaches_image_not_weights(
    encoder: VGGFeatures, images: tuple[torch.Tensor, ...]
) -> None:
    """The total is differentiable in the image; the frozen encoder gets no gradients."""
    image = images[2].clone().requires_grad_(True)
    make_loss(encoder, images, tv_weight=1.0)(image)["total"].backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in encoder.parameters())


def test_gatys_loss_terms_fp32_under_bf16_autocast(
    encoder: VGGFeatures, images: tuple[torch.Tensor, ...]
) -> None:
    """With bf16 features (autocast), every loss term is fp32 and close to the fp32 result."""
    loss = make_loss(encoder, images, tv_weight=1.0)
    reference = loss(images[2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = encoder(images[2])
        terms = loss(images[2])
    assert features[0].dtype == torch.bfloat16  # the encoder really ran in bf16
    for key, value in terms.items():
        assert value.dtype == torch.float32, key
        assert value.item() == pytest.approx(reference[key].item(), rel=0.1), key
