"""The naive baseline: Gatys style transfer written the way the PyTorch "Neural Transfer" tutorial
writes it (loss modules inserted into a Sequential copy of VGG, torch.optim.LBFGS at its defaults
called with a closure, losses read back with `.item()` every evaluation; the VGG weights keep
requires_grad unless `freeze=True`, as in the tutorial's versions before 2023).

Deliberately not optimised: this is what the benchmark compares stylelab against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target.detach()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # The tutorial needs style and content of one size only because the style image passes
        # through this module while targets are built; skip that pass for a style of another size.
        if input.shape == self.target.shape:
            self.loss = F.mse_loss(input, self.target)
        return input


def gram_matrix(input: torch.Tensor) -> torch.Tensor:
    a, b, c, d = input.size()
    features = input.view(a * b, c * d)
    G = torch.mm(features, features.t())
    return G.div(a * b * c * d)


class StyleLoss(nn.Module):
    def __init__(self, target_feature: torch.Tensor):
        super().__init__()
        self.target = gram_matrix(target_feature).detach()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        G = gram_matrix(input)
        self.loss = F.mse_loss(G, self.target)
        return input


class Normalization(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.mean = mean.clone().detach().view(-1, 1, 1)
        self.std = std.clone().detach().view(-1, 1, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return (img - self.mean) / self.std


def get_style_model_and_losses(
    cnn, mean, std, style_img, content_img, content_layers, style_layers
):
    normalization = Normalization(mean, std)
    content_losses, style_losses = [], []
    model = nn.Sequential(normalization)
    i = 0
    for layer in cnn.children():
        if isinstance(layer, nn.Conv2d):
            i += 1
            name = f"conv_{i}"
        elif isinstance(layer, nn.ReLU):
            name = f"relu_{i}"
            layer = nn.ReLU(inplace=False)
        elif isinstance(layer, nn.MaxPool2d):
            name = f"pool_{i}"
        else:
            raise RuntimeError(f"Unrecognized layer: {layer.__class__.__name__}")
        model.add_module(name, layer)
        if name in content_layers:
            target = model(content_img).detach()
            content_loss = ContentLoss(target)
            model.add_module(f"content_loss_{i}", content_loss)
            content_losses.append(content_loss)
        if name in style_layers:
            target_feature = model(style_img).detach()
            style_loss = StyleLoss(target_feature)
            model.add_module(f"style_loss_{i}", style_loss)
            style_losses.append(style_loss)
    for i in range(len(model) - 1, -1, -1):
        if isinstance(model[i], (ContentLoss, StyleLoss)):
            break
    model = model[: (i + 1)]
    return model, style_losses, content_losses


def run_style_transfer(
    cnn, mean, std, content_img, style_img, input_img, num_evals=300, style_weight=1e6,
    content_weight=1, content_layers=("conv_12",), style_layers=("conv_1", "conv_3", "conv_5", "conv_9", "conv_13"),
    freeze=False, history=None,
):  # fmt: skip
    """Runs until the evaluation counter reaches `num_evals` (it may overshoot, as in the tutorial).

    `freeze=False` is the tutorial as shipped for years (and widely copied): the VGG weights
    keep requires_grad, so every backward also computes (and accumulates) weight gradients.
    `freeze=True` adds the later tutorial's `model.requires_grad_(False)`.
    Returns the image, the number of evaluations and the (style, content) losses of each one
    (appended to `history` if given).
    """
    model, style_losses, content_losses = get_style_model_and_losses(
        cnn, mean, std, style_img, content_img, content_layers, style_layers
    )
    input_img.requires_grad_(True)
    model.eval()
    if freeze:
        model.requires_grad_(False)
    optimizer = torch.optim.LBFGS([input_img])
    run = [0]
    history = [] if history is None else history
    while run[0] < num_evals:

        def closure():
            with torch.no_grad():
                input_img.clamp_(0, 1)
            optimizer.zero_grad()
            model(input_img)
            style_score = 0
            content_score = 0
            for sl in style_losses:
                style_score += sl.loss
            for cl in content_losses:
                content_score += cl.loss
            style_score *= style_weight
            content_score *= content_weight
            loss = style_score + content_score
            loss.backward()
            run[0] += 1
            history.append((style_score.item(), content_score.item()))
            return style_score + content_score

        optimizer.step(closure)
    with torch.no_grad():
        input_img.clamp_(0, 1)
    return input_img, run[0], history


def tutorial_layer_names(style: list[int], content: list[int]) -> tuple[list[str], list[str]]:
    """torchvision `features` indices of conv layers -> the tutorial's names (`conv_N`)."""
    from stylelab.engine.features import LAYER_NAMES

    convs = [index for index, name in enumerate(LAYER_NAMES) if name.startswith("conv")]
    names = {index: f"conv_{number}" for number, index in enumerate(convs, start=1)}
    return [names[i] for i in style], [names[i] for i in content]
