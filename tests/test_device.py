"""Choosing the compute device, with CUDA/MPS availability faked so results do not depend on the host."""

from __future__ import annotations

import pytest
import torch

from stylelab.engine.device import resolve_device
from stylelab.errors import DeviceError


@pytest.fixture
def no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def device_error(name: str) -> str:
    """resolve_device(name) must raise DeviceError with a one-line message; returns it."""
    with pytest.raises(DeviceError) as info:
        resolve_device(name)
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu ", "auto"])
@pytest.mark.usefixtures("no_accelerators")
def test_cpu_and_auto_without_accelerators(name: str) -> None:
    """cpu (any case, spaces) is cpu; auto falls back to cpu."""
    device = resolve_device(name)
    assert isinstance(device, torch.device)
    assert device == torch.device("cpu")


@pytest.mark.usefixtures("one_gpu")
def test_auto_prefers_cuda() -> None:
    assert resolve_device("auto") == torch.device("cuda")


def test_auto_uses_mps_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:0"])
@pytest.mark.usefixtures("no_accelerators")
def test_cuda_without_cuda(name: str) -> None:
    """Asking for CUDA where there is none says so and suggests cpu/auto."""
    message = device_error(name)
    assert "CUDA is not available" in message
    assert "device=cpu" in message


@pytest.mark.usefixtures("one_gpu")
def test_cuda_with_one_gpu() -> None:
    """cuda and cuda:0 exist on a one-GPU machine; cuda:1 and cuda:5 do not."""
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    for name in ("cuda:1", "cuda:5"):
        message = device_error(name)
        assert f"'{name}' does not exist" in message
        assert "1 CUDA device" in message and "cuda:0..cuda:0" in message


@pytest.mark.usefixtures("no_accelerators")
def test_mps_unavailable() -> None:
    assert "MPS is not available" in device_error("mps")


@pytest.mark.parametrize("name", ["tpu", "banana", "", "cuda:x", "gpu", "cuda:-1"])
@pytest.mark.usefixtures("no_accelerators")
def test_unknown_devices(name: str) -> None:
    """Names torch does not know list the valid choices."""
    message = device_error(name)
    assert "auto, cpu, cuda, cuda:N or mps" in message


@pytest.mark.parametrize("name", ["meta", "xpu"])
@pytest.mark.usefixtures("no_accelerators")
def test_devices_torch_knows_but_stylelab_does_not(name: str) -> None:
    """Valid torch device types outside auto/cpu/cuda/mps are refused too."""
    assert "unsupported device" in device_error(name)
