"""The optimisation loop: loss goes down, pixels stay valid, runs repeat exactly, starts are right."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from stylelab.engine.features import VGGFeatures, load_vgg19_features
from stylelab.engine.objective import Objective, gatys_objective
from stylelab.engine.optim import make_optimizer
from stylelab.engine.synthesis import INITS, Synthesizer, initial_image

APPROACH1 = ([0, 5, 10, 19, 28], [25])  # (style, content): the write-up's approach1
SHALLOW = ([0, 5, 10], [12])  # conv1_1..conv3_1 and conv3_2: ~4x cheaper, for the other tests


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def features() -> nn.Sequential:
    return load_vgg19_features("random", seed=0)


@pytest.fixture(scope="module")
def encoder(features: nn.Sequential) -> VGGFeatures:
    """Shallow layers on random VGG-19 weights."""
    return VGGFeatures(features, SHALLOW[0] + SHALLOW[1])


@pytest.fixture
def small_images(
    tiny_images: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 crops of conftest's 32 px pair: enough for the shallow layers, 4x cheaper."""
    content, style = tiny_images
    return content[..., :16, :16].contiguous(), style[..., 8:24, 8:24].contiguous()


def make_loss(
    encoder: VGGFeatures,
    images: tuple[torch.Tensor, torch.Tensor],
    style_weight: float = 1e9,
    layers: tuple[list[int], list[int]] = SHALLOW,
) -> Objective:
    """With random weights Grams are tiny, so the style weight is raised to matter."""
    content, style = images
    return gatys_objective(
        encoder, content, style, layers[1], layers[0], style_weight=style_weight, tv_weight=1.0
    )


def run(synth: Synthesizer, steps: int) -> list[float]:
    """`steps` steps; checks pixels stay in [0, 1] after each; returns the evaluated totals."""
    totals = []
    for _ in range(steps):
        totals.append(synth.step()["total"].item())
        assert synth.image.min().item() >= 0.0 and synth.image.max().item() <= 1.0
    return totals


def final_total(synth: Synthesizer) -> float:
    return synth.evaluate()[0]["total"].item()


@pytest.mark.parametrize(("optimizer", "lr", "drop"), [("lbfgs", 1.0, 0.5), ("adam", 0.02, 0.8)])
def test_loss_falls(
    features: nn.Sequential,
    tiny_images: tuple[torch.Tensor, torch.Tensor],
    optimizer: str,
    lr: float,
    drop: float,
) -> None:
    """approach1, 32 px: 10 steps from the content image cut the total loss clearly."""
    encoder = VGGFeatures(features, APPROACH1[0] + APPROACH1[1])
    loss = make_loss(encoder, tiny_images, layers=APPROACH1)
    assert {"style/conv5_1", "content/conv4_4"} <= set(loss(tiny_images[0]))
    synth = Synthesizer(loss, initial_image("content", tiny_images[0]), optimizer=optimizer, lr=lr)
    totals = run(synth, 10)
    end = final_total(synth)
    assert all(torch.isfinite(torch.tensor(totals)))
    assert end < drop * totals[0], (totals, end)
    assert synth.step_count == 10


def test_loss_falls_from_noise(
    encoder: VGGFeatures, small_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """From noise, L-BFGS cuts the total loss several-fold."""
    loss = make_loss(encoder, small_images)
    synth = Synthesizer(loss, initial_image("noise", small_images[0], seed=3), optimizer="lbfgs")
    first = synth.evaluate()[0]["total"].item()
    run(synth, 10)
    assert final_total(synth) < 0.3 * first


def test_content_only_moves_towards_content(
    encoder: VGGFeatures, small_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """With only the content loss, noise moves towards the content image's features."""
    content, style = small_images
    loss = gatys_objective(
        encoder, content, style, [12], [0], content_weight=1e3, style_weight=0.0, tv_weight=0.0
    )
    synth = Synthesizer(loss, initial_image("noise", content, seed=3), optimizer="lbfgs")
    first = synth.evaluate()[0]
    run(synth, 10)
    last = synth.evaluate()[0]
    assert last["style"].item() == 0.0 and last["tv"].item() == 0.0
    assert last["content"] < 0.5 * first["content"]


def test_pixels_clamped_even_with_huge_steps(
    encoder: VGGFeatures, small_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """A learning rate that overshoots still leaves every pixel in [0, 1]."""
    loss = make_loss(encoder, small_images, style_weight=1e12)
    synth = Synthesizer(loss, initial_image("content", small_images[0]), optimizer="adam", lr=5.0)
    run(synth, 3)
    assert synth.image.min() == 0.0 or synth.image.max() == 1.0  # it really hit the bounds


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_same_seed_bit_identical(
    encoder: VGGFeatures, small_images: tuple[torch.Tensor, torch.Tensor], optimizer: str
) -> None:
    """Two runs with the same seed give bit-identical images and losses on CPU."""
    results = []
    for _ in range(2):
        loss = make_loss(encoder, small_images)
        start = initial_image("noise", small_images[0], seed=11)
        synth = Synthesizer(
            loss, start, optimizer=optimizer, lr=1.0 if optimizer == "lbfgs" else 0.02
        )
        results.append((run(synth, 5), synth.image.clone()))
    (totals_a, image_a), (totals_b, image_b) = results
    assert totals_a == totals_b
    assert torch.equal(image_a, image_b)


def test_does_not_modify_the_start_image(
    encoder: VGGFeatures, small_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """The start tensor (here the content image itself) is copied, not optimised in place."""
    content = small_images[0]
    before = content.clone()
    synth = Synthesizer(make_loss(encoder, small_images), content, optimizer="adam", lr=0.05)
    run(synth, 2)
    assert torch.equal(content, before)
    assert not torch.equal(synth.image, before)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_resume_from_state_dict(
    encoder: VGGFeatures, small_images: tuple[torch.Tensor, torch.Tensor], optimizer: str
) -> None:
    """3 steps, save, 3 more == 3 steps, save, load into a fresh synthesizer, 3 more."""
    loss = make_loss(encoder, small_images)
    lr = 1.0 if optimizer == "lbfgs" else 0.02
    straight = Synthesizer(
        loss, initial_image("content", small_images[0]), optimizer=optimizer, lr=lr
    )
    run(straight, 3)
    buffer = io.BytesIO()  # as the runner's checkpoint does
    torch.save(straight.state_dict(), buffer)
    tail = run(straight, 3)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    resumed = Synthesizer(loss, initial_image("noise", small_images[0]), optimizer=optimizer, lr=lr)
    resumed.load_state_dict(state)
    assert resumed.step_count == 3
    assert run(resumed, 3) == tail
    assert torch.equal(resumed.image, straight.image)


def test_bf16_losses_are_fp32(
    encoder: VGGFeatures, small_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """precision=bf16 (CPU autocast here): loss terms and the gradient come back fp32 and finite."""
    loss = make_loss(encoder, small_images)
    start = initial_image("noise", small_images[0])
    terms, grad = Synthesizer(loss, start, precision="bf16").evaluate()
    reference, _ = Synthesizer(loss, start, precision="fp32").evaluate()
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    for key, value in terms.items():
        assert value.dtype == torch.float32, key
        assert torch.isfinite(value), key
    assert terms["total"].item() == pytest.approx(reference["total"].item(), rel=0.1)


def test_bad_arguments(
    encoder: VGGFeatures, small_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    loss = make_loss(encoder, small_images)
    with pytest.raises(ValueError, match="precision 'fp16'"):
        Synthesizer(loss, small_images[0], precision="fp16")
    with pytest.raises(ValueError, match="optimizer 'sgd'"):
        Synthesizer(loss, small_images[0], optimizer="sgd")


# --- initial_image ------------------------------------------------------------------------------


def test_init_content(tiny_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    """A copy of the content image (not the same storage)."""
    content = tiny_images[0]
    start = initial_image("content", content)
    assert torch.equal(start, content)
    assert start.data_ptr() != content.data_ptr()


def test_init_noise(tiny_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Uniform noise shaped like the content, in [0, 1), reproducible by seed."""
    content = tiny_images[0]
    noise = initial_image("noise", content, seed=5)
    assert noise.shape == content.shape and noise.dtype == torch.float32
    assert noise.min() >= 0.0 and noise.max() < 1.0
    assert 0.4 < noise.mean().item() < 0.6
    assert torch.equal(noise, initial_image("noise", content, seed=5))
    assert not torch.equal(noise, initial_image("noise", content, seed=6))
    assert not torch.equal(noise, content)


def test_init_style_resized_to_content() -> None:
    """The style image, resized to the content's height and width, values kept in [0, 1]."""
    content = torch.rand(1, 3, 32, 24)
    style = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    start = initial_image("style", content, style)
    assert start.shape == content.shape
    assert start.min() >= 0.0 and start.max() <= 1.0
    assert abs(start.mean().item() - style.mean().item()) < 0.02
    same_size = torch.rand(1, 3, 32, 24, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(initial_image("style", content, same_size), same_size)


def test_init_image() -> None:
    """A given image, resized like the style; `image` and `style` are not mixed up."""
    content = torch.rand(1, 3, 16, 16)
    style = torch.zeros(1, 3, 16, 16)
    image = torch.ones(1, 3, 8, 8)
    start = initial_image("image", content, style, image)
    assert start.shape == (1, 3, 16, 16)
    torch.testing.assert_close(start, torch.ones(1, 3, 16, 16))


def test_init_errors() -> None:
    content = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="init=image needs an image"):
        initial_image("image", content, content)
    with pytest.raises(ValueError, match="init=style needs an image"):
        initial_image("style", content)
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        initial_image("zeros", content)
    assert INITS == ("content", "noise", "style", "image")


# --- the L-BFGS it relies on ------------------------------------------------------------------


@pytest.mark.parametrize("history_size", [3, 100])
def test_lbfgs_matches_torch_lbfgs(history_size: int) -> None:
    """One step per evaluation, no line search: same iterates as torch.optim.LBFGS(max_iter=1)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(20, 20, generator=generator)
    q, b = a @ a.T / 20 + 0.1 * torch.eye(20), torch.randn(20, generator=generator)
    x0 = torch.randn(20, generator=generator)

    def f(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x @ q @ x - b @ x + 0.1 * (x**4).sum()

    ours = x0.clone()
    optimizer = make_optimizer("lbfgs", ours, lr=1.0, history_size=history_size)
    reference = nn.Parameter(x0.clone())
    torch_lbfgs = torch.optim.LBFGS(
        [reference],
        lr=1.0,
        max_iter=1,
        history_size=history_size,
        tolerance_grad=0,
        tolerance_change=0,
    )

    def closure() -> torch.Tensor:
        torch_lbfgs.zero_grad()
        value = f(reference)
        value.backward()
        return value

    for step in range(8):
        x = ours.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(x), x)
        optimizer.step(grad)
        torch_lbfgs.step(closure)
        torch.testing.assert_close(
            ours, reference.detach(), rtol=1e-4, atol=1e-5, msg=f"step {step}"
        )
