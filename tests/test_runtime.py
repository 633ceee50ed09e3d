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


def test_available_cores_follow_the_affinity_not_the_machine():
    import os
    import subprocess
    import sys

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    # A child pinned to one core (as taskset or a batch scheduler would) sees one core.
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from nanoseg.runtime import available_cores; print(available_cores())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
    assert 1 <= runtime.available_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("text", "cpus"), [("200000 100000\n", 2.0), ("150000 100000", 1.5), ("max 100000", None),
                                            ("garbage", None)])
def test_cgroup_cpu_quota_is_read_from_cpu_max(tmp_path, text, cpus):
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert runtime._cgroup_cpu_quota(str(path)) == cpus
    assert runtime._cgroup_cpu_quota(str(tmp_path / "absent")) is None


def test_a_container_quota_caps_the_cores(monkeypatch):
    monkeypatch.setattr(runtime, "_cgroup_cpu_quota", lambda: 1.0)
    assert runtime.available_cores() == 1


def test_progress_logs_a_line_per_tenth_when_stderr_is_a_file(monkeypatch, caplog):
    import logging

    monkeypatch.delenv("NANOSEG_NO_PROGRESS", raising=False)
    monkeypatch.setattr(runtime, "_interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="nanoseg"):
        items = list(runtime.progress(range(250), total=250, desc="segment"))
    assert items == list(range(250))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("segment:")]
    assert len(lines) == 10
    assert lines[0].startswith("segment: 25/250 (10 %)") and "ETA" in lines[0]
    assert lines[-1].startswith("segment: 250/250 (100 %)") and "ETA" not in lines[-1]


def test_logged_progress_resumes_from_initial_and_counts_updates(caplog):
    import logging

    bar = runtime.LoggedProgress(total=100, desc="train", initial=50)
    with caplog.at_level(logging.INFO, logger="nanoseg"):
        for _ in range(50):
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train:")]
    assert [line.split(" (")[0] for line in lines] == [f"train: {n}/100" for n in (60, 70, 80, 90, 100)]


def test_progress_is_a_tqdm_bar_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NANOSEG_NO_PROGRESS", raising=False)
    monkeypatch.setattr(runtime, "_interactive", lambda: True)
    bar = runtime.progress(range(3), total=3, desc="x")
    assert not isinstance(bar, runtime.LoggedProgress) and list(bar) == [0, 1, 2]


def test_device_choice_follows_what_torch_reports(monkeypatch):
    """The GPU path is chosen from torch's answers; on this CPU machine they are faked."""
    torch = pytest.importorskip("torch")
    from nanoseg.errors import NanosegError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.select_device("auto").type == "cpu"
    with pytest.raises(NanosegError, match="no CUDA device"):
        runtime.select_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.select_device("auto").type == "cuda" and runtime.select_device("cpu").type == "cpu"
    # Mixed precision on a GPU: bf16 autocast where the GPU runs bf16, float32 where it does not.
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        assert runtime.bf16_supported("cuda") is supported
