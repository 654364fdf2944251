"""The device helper: CUDA-only choices (autocast dtype, gradient scaler, channels-last,
pinned memory) decided in one place, tested with the GPU mocked."""

from __future__ import annotations

import warnings

import pytest
import torch

from bloodlib.engine.device import device_plan


def test_cpu_plan_is_plain_fp32_unless_bf16_is_asked():
    p = device_plan("cpu")
    assert (p.amp_dtype, p.channels_last, p.pin_memory, p.grad_scaler()) == (None, False, False, None)
    assert device_plan("cpu", amp="bf16").amp_dtype == torch.bfloat16
    assert device_plan("cpu", channels_last=True).channels_last
    assert p.loader_kwargs() == {"pin_memory": False}
    with p.autocast():
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("bf16_ok, amp, dtype, scaled", [
    (True, "auto", torch.bfloat16, False),
    (False, "auto", torch.float16, True),
    (True, "fp16", torch.float16, True),
    (False, "bf16", torch.bfloat16, False),
    (True, False, None, False),
    (True, "off", None, False),
])
def test_cuda_plan_with_the_gpu_mocked(monkeypatch, bf16_ok, amp, dtype, scaled):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    p = device_plan("cuda", amp=amp)
    assert p.amp_dtype == dtype and p.channels_last and p.pin_memory
    assert p.loader_kwargs() == {"pin_memory": True}
    with warnings.catch_warnings():  # GradScaler warns that CUDA is absent here
        warnings.simplefilter("ignore")
        scaler = p.grad_scaler()
    assert isinstance(scaler, torch.amp.GradScaler) if scaled else scaler is None
    assert not device_plan("cuda", channels_last=False).channels_last


def test_fit_and_train_detector_take_their_settings_from_the_plan(monkeypatch):
    """Both loops ask device_plan once; a plan saying bf16 autocast is what they use."""
    import bloodlib.engine.detection as det
    import bloodlib.engine.trainer as tr
    asked = []

    def spy(device, amp="auto", channels_last="auto"):
        asked.append((str(device), amp))
        return device_plan(device, amp, channels_last)
    monkeypatch.setattr(tr, "device_plan", spy)
    monkeypatch.setattr(det, "device_plan", spy)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    data = [(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 0, 1]))]
    tr.fit(model, data, None, torch.nn.CrossEntropyLoss(),
           torch.optim.SGD(model.parameters(), lr=0.1), epochs=1, device="cpu", amp="bf16",
           progress=False)
    from test_engine_detection import ToyDetector, _loader
    det.train_detector(ToyDetector(), _loader(), iterations=1, warmup_iters=0, amp="fp16",
                       progress=False)
    assert asked == [("cpu", "bf16"), ("cpu", "fp16")]


def test_the_loop_pins_loader_memory_when_the_plan_says_so():
    """Pinned host memory is a CUDA-only branch: the plan turns it on, the loop rebuilds
    the loader with it and keeps the sampler (and so the resumable shuffle order)."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from bloodlib.engine.device import DevicePlan
    from bloodlib.engine.loop import SupervisedStep, TrainLoop
    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    loader = DataLoader(data, batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model = nn.Linear(4, 2)
    step = SupervisedStep(nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1))
    pinned = DevicePlan(torch.device("cpu"), None, False, pin_memory=True)
    loop = TrainLoop(model, step, loader, max_steps=1, plan=pinned, progress=False)
    assert loop.loader.pin_memory and loop.loader.sampler is loader.sampler
    plain = DevicePlan(torch.device("cpu"), None, False, pin_memory=False)
    assert TrainLoop(model, step, loader, max_steps=1, plan=plain).loader is loader
