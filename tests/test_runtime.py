"""Run-time plumbing: bf16 only where the hardware runs it natively, peak memory."""

from __future__ import annotations

import pytest

from nanoseg import runtime


def test_autocast_falls_back_to_float32_without_native_bf16(monkeypatch):
    torch = pytest.importorskip("torch")
    net = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: False)
    with runtime.autocast("cpu", True):
        assert net(x).dtype == torch.float32
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: True)
    with runtime.autocast("cpu", True):
        assert net(x).dtype == torch.bfloat16
    with runtime.autocast("cpu", False):
        assert net(x).dtype == torch.float32


def test_bf16_supported_answers_for_the_cpu():
    pytest.importorskip("torch")
    assert runtime.bf16_supported("cpu") in (True, False)
    assert runtime.bf16_supported("meta") is False


def test_peak_rss_grows_with_an_allocation():
    import numpy as np

    before = runtime.peak_rss_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert runtime.peak_rss_mb() >= before and runtime.peak_rss_mb() > 64
    del block
