"""The shared training checkpoints (nanoseg.checkpoint) and the four loops that use them.

Each loop (segment, classify, CycleGAN, WGAN-GP) resumes only a checkpoint of its own data and
training settings, reads it safely (weights_only: a pickled object is refused, not executed) and
starts fresh, with a warning and the same result as a run without the checkpoint, from a file
that is damaged, in an older layout or made from other data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nanoseg.checkpoint import FORMAT, fingerprint, load_checkpoint, restore_rng, save_checkpoint
from nanoseg.config import build_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- the module


def test_rng_round_trips(tmp_path):
    for bit_generator in (np.random.PCG64, np.random.MT19937):
        rng = np.random.Generator(bit_generator(5))
        rng.random(7)
        torch.manual_seed(3)
        torch.rand(5)
        save_checkpoint(tmp_path / "c.pt", fingerprint="x", step=1, rng=rng)
        want_np, want_torch = rng.random(4), torch.rand(4)
        other = np.random.Generator(bit_generator(99))
        torch.manual_seed(99)
        state = load_checkpoint(tmp_path / "c.pt", "x", what="test")
        restore_rng(state, other)
        np.testing.assert_array_equal(other.random(4), want_np)
        assert torch.equal(torch.rand(4), want_torch)
        assert isinstance(state["rng"], str)  # JSON: loadable with weights_only


def test_state_dicts_round_trip_and_missing_file_is_quietly_none(tmp_path, caplog):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", fingerprint="fp", step=7, nets={"n": net.state_dict()},
                    optimizers={"o": opt.state_dict()}, extra={"losses": [1.0, 0.5], "best": -np.inf})
    state = load_checkpoint(tmp_path / "c.pt", "fp", what="test")
    assert state["format"] == FORMAT and state["step"] == 7 and state["extra"] == {"losses": [1.0, 0.5], "best": -np.inf}
    assert all(torch.equal(a, b) for a, b in zip(state["nets"]["n"].values(), net.state_dict().values()))
    torch.optim.Adam(torch.nn.Linear(3, 2).parameters()).load_state_dict(state["optimizers"]["o"])
    with caplog.at_level("WARNING", logger="nanoseg"):
        assert load_checkpoint(tmp_path / "missing.pt", "fp", what="test") is None
    assert caplog.text == ""


class _Payload:
    """Unpickling this calls os.mkdir: what a safe load must never do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _damage(path: Path, how: str, fp: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "pickled object":
        state = torch.load(path, weights_only=True)
        state["extra"]["payload"] = _Payload(path.parent / "executed")
        torch.save(state, path)
    elif how == "old layout":  # as the classifier wrote it before: no format, no fingerprint
        torch.save({"net": {}, "optimizer": {}, "rng": np.random.default_rng(0).bit_generator.state, "losses": [],
                    "step": 2, "average": None}, path)
    elif how == "wrong entries":
        torch.save({"format": FORMAT, "fingerprint": fp, "step": "two"}, path)


@pytest.mark.parametrize("how, message", [("truncated", "cannot be read"), ("pickled object", "cannot be read"),
                                          ("old layout", "is in another layout"), ("wrong entries", "is damaged")])
def test_unusable_checkpoint_is_a_warning_and_none(tmp_path, caplog, how, message):
    path = tmp_path / "c.pt"
    save_checkpoint(path, fingerprint="fp", step=1, nets={"n": torch.nn.Linear(2, 2).state_dict()})
    _damage(path, how, "fp")
    with caplog.at_level("WARNING", logger="nanoseg"):
        assert load_checkpoint(path, "fp", what="test") is None
    assert f"test: checkpoint {path} {message}" in caplog.text and "starting fresh" in caplog.text
    assert not (tmp_path / "executed").exists()


def test_other_fingerprint_is_a_warning_and_none(tmp_path, caplog):
    save_checkpoint(tmp_path / "c.pt", fingerprint="a", step=1)
    with caplog.at_level("WARNING", logger="nanoseg"):
        assert load_checkpoint(tmp_path / "c.pt", "b", what="test", data="outlines") is None
    assert f"checkpoint {tmp_path / 'c.pt'} was trained on other outlines or settings; starting fresh" in caplog.text


def test_fingerprint_hashes_structure_values_and_file_contents(tmp_path):
    a = np.arange(6, dtype=np.float32)
    assert fingerprint({"x": 1, "y": [a]}) == fingerprint({"y": [a.copy()], "x": 1})  # key order does not count
    assert fingerprint(a) != fingerprint(a.astype(np.float64))  # dtype counts
    assert fingerprint(a) != fingerprint(a.reshape(2, 3))  # shape counts
    assert fingerprint(a) != fingerprint(a + 1)
    assert fingerprint(["ab", "c"]) != fingerprint(["a", "bc"])  # no collisions by concatenation
    assert fingerprint(1) != fingerprint("1") and fingerprint(None) != fingerprint("null")
    f = tmp_path / "w.pt"
    f.write_bytes(b"one")
    first = fingerprint(f)
    f.write_bytes(b"two")
    assert fingerprint(f) != first and fingerprint(f) != fingerprint(str(f))
    assert fingerprint(torch.ones(2, dtype=torch.bfloat16)) != fingerprint(torch.ones(2))
    with pytest.raises(TypeError, match="cannot hash"):
        fingerprint(object())


# --------------------------------------------------------------------------- the four loops
#
# Each loop has: data(variant) -> its training data; first(data, out) leaves a checkpoint in
# out; run(data, out) -> what the training gave (comparable with ==); its checkpoint's path.


def _segment_data(variant):
    from skimage.draw import disk

    from nanoseg.segment import Pair

    rng = np.random.default_rng(0)
    inst = np.zeros((48, 48), np.int32)
    inst[disk((14, 14), 7)] = 1
    inst[disk((32, 33), 8)] = 2
    image = (inst > 0).astype(np.float32) * 0.6 + 0.2
    if variant == "other":
        image = 1.0 - image
    return [Pair(image + rng.normal(0, 0.05, image.shape).astype(np.float32), inst, f"p{i}") for i in range(3)]


def _segment_run(pairs, out):
    from nanoseg.segment import train

    cfg = build_config({"segment": {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 32,
                                    "batch_size": 2, "val_every": 2, "bf16": False}}).segment
    torch.manual_seed(0)
    train(pairs, cfg, out, steps=2, rng=np.random.default_rng(1), pixel_size_nm=1.0)
    return [(h["train_loss"], h["val_loss"]) for h in json.loads((out / "history.json").read_text())]


def _classify_samples(variant="same"):
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(2):
        image = rng.normal(0.2, 0.03, (40, 40)).astype(np.float32)
        binary = np.zeros((40, 40), np.uint8)
        keep = np.zeros((40, 40), np.uint8)
        for r in range(2, 28, 13):
            for c in range(2, 28, 13):
                s = int(rng.integers(5, 11))
                binary[r:r + s, c:c + s] = 1
                image[r:r + s, c:c + s] += 0.6 if s % 2 else 0.3
                keep[r:r + s, c:c + s] = s % 2
        samples.append((np.clip(1 - image if variant == "other" else image, 0, 1), binary, keep))
    return samples


def _classify_cfg(**values):
    base = {"base_width": 4, "depth": 2, "tile_size_px": 32, "batch_size": 2, "bf16": False, "score_threshold": 0.5,
            "checkpoint_every": 2, "ema_decay": 0.5}
    return build_config({"classify": {**base, **values}}, profile="demo").classify


def _classify_run(samples, out, steps=3):
    from nanoseg.classify import train_classifier

    torch.manual_seed(0)
    net, losses = train_classifier(samples, _classify_cfg(), steps=steps, seed=3, checkpoint=out / "classify.pt")
    return losses, [v.clone() for v in net.state_dict().values()]


def _shapes_data(variant):
    from nanoseg.shapes import random_polygons

    return random_polygons(6, 16, np.random.default_rng(1 if variant == "other" else 0), mean_area_px=40)


def _shapes_run(outlines, out):
    from nanoseg.shapes import train_wgan

    cfg = build_config({"shapes": {"outline_size_px": 16, "generator_width": 4, "critic_width": 4, "latent_dim": 4,
                                   "batch_size": 4, "critic_steps": 1, "steps": 2, "checkpoint_every": 1}}).shapes
    _, losses = train_wgan(outlines, cfg, out, seed=1)
    return losses


def _cyclegan_data(variant):
    rng = np.random.default_rng(0)
    masks = [rng.random((32, 32)) > 0.6 for _ in range(2)]
    images = [rng.random((32, 32)).astype(np.float32) for _ in range(2)]
    return (images, masks) if variant == "other" else (masks, images)


def _cyclegan_cfg():
    values = {"tile_size_px": 32, "generator_width": 4, "discriminator_width": 4, "n_res_blocks": 1, "bf16": False,
              "steps": 2, "checkpoint_every": 1, "pool_size": 1}
    return build_config({"translate": values}).translate


def _cyclegan_run(data, out):
    from nanoseg.translate import train_cyclegan

    torch.manual_seed(0)
    model = train_cyclegan(*data, _cyclegan_cfg(), out, rng=np.random.default_rng(0))
    return [v.clone() for v in model.g_ab.state_dict().values()]


def _cyclegan_first(data, out):
    """An interrupted training: the checkpoint of step 1 is left (a finished run removes it)."""
    from nanoseg.translate import CycleGAN

    real = CycleGAN.train_step

    def stop_after_1(self, a, b):
        if self.step == 1:
            raise KeyboardInterrupt
        return real(self, a, b)

    CycleGAN.train_step = stop_after_1
    try:
        with pytest.raises(KeyboardInterrupt):
            _cyclegan_run(data, out)
    finally:
        CycleGAN.train_step = real


LOOPS = {
    "segment": (_segment_data, _segment_run, _segment_run, "checkpoint.pt"),
    "classify": (_classify_samples, _classify_run, _classify_run, "classify.pt"),
    "shapes": (_shapes_data, _shapes_run, _shapes_run, "checkpoint.pt"),
    "translate": (_cyclegan_data, _cyclegan_first, _cyclegan_run, "checkpoint.pt"),
}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("loop", LOOPS)
def test_checkpoint_of_other_data_is_not_resumed(tmp_path, caplog, loop):
    data, first, run, name = LOOPS[loop]
    first(data("same"), tmp_path / "a")
    assert (tmp_path / "a" / name).is_file()
    with caplog.at_level("WARNING", logger="nanoseg"):
        resumed = run(data("other"), tmp_path / "a")
    assert f"{loop}: checkpoint {tmp_path / 'a' / name} was trained on other" in caplog.text
    assert "starting fresh" in caplog.text
    assert _same(resumed, run(data("other"), tmp_path / "b"))  # as if there had been no checkpoint


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("how, message", [("truncated", "cannot be read"), ("pickled object", "cannot be read"),
                                          ("old layout", "is in another layout")])
def test_unusable_checkpoint_starts_fresh(tmp_path, caplog, loop, how, message):
    data, first, run, name = LOOPS[loop]
    first(data("same"), tmp_path / "a")
    _damage(tmp_path / "a" / name, how, "")
    with caplog.at_level("WARNING", logger="nanoseg"):
        fresh = run(data("same"), tmp_path / "a")
    assert f"{loop}: checkpoint {tmp_path / 'a' / name} {message}" in caplog.text
    assert not (tmp_path / "a" / "executed").exists()  # refused, never run
    assert _same(fresh, run(data("same"), tmp_path / "b"))


def test_cyclegan_generators_of_other_data_are_retrained(tmp_path, caplog):
    """A finished run leaves the generators, no checkpoint; they too count only for their own data."""
    _cyclegan_run(_cyclegan_data("same"), tmp_path / "a")
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    with caplog.at_level("WARNING", logger="nanoseg"):
        retrained = _cyclegan_run(_cyclegan_data("other"), tmp_path / "a")
    assert "generators in" in caplog.text and "trained on other data or settings" in caplog.text
    assert _same(retrained, _cyclegan_run(_cyclegan_data("other"), tmp_path / "b"))
    caplog.clear()
    with caplog.at_level("INFO", logger="nanoseg"):
        again = _cyclegan_run(_cyclegan_data("other"), tmp_path / "a")
    assert "already trained" in caplog.text and _same(again, retrained)


def test_fingerprints_leave_out_the_step_count_and_inference_settings():
    from nanoseg.classify.network import training_fingerprint as classify_fp
    from nanoseg.shapes import training_fingerprint as shapes_fp
    from nanoseg.translate.cyclegan import training_fingerprint as translate_fp

    samples = _classify_samples()
    cfg = _classify_cfg()
    assert classify_fp(samples, cfg, 3) == classify_fp(samples, cfg.model_copy(
        update={"steps": 99, "checkpoint_every": 7, "score_threshold": 0.3}), 3)
    assert classify_fp(samples, cfg, 3) != classify_fp(samples, cfg.model_copy(update={"learning_rate": 1e-2}), 3)
    assert classify_fp(samples, cfg, 3) != classify_fp(samples, cfg, 4)
    assert classify_fp(samples, cfg, 3) != classify_fp(samples, cfg, 3, torch.nn.Linear(2, 2))
    outlines = _shapes_data("same")
    shapes = build_config({}).shapes
    assert shapes_fp(outlines, shapes, 0) == shapes_fp(outlines, shapes.model_copy(
        update={"steps": 9, "n_samples": 5, "smooth_sigma_px": 1.0}), 0)
    assert shapes_fp(outlines, shapes, 0) != shapes_fp(outlines[:-1], shapes, 0)
    masks, images = _cyclegan_data("same")
    tr = _cyclegan_cfg()
    assert translate_fp(masks, images, tr, True) == translate_fp(masks, images, tr.model_copy(
        update={"steps": 50, "n_pairs": 3, "checkpoint_every": 9}), True)
    assert translate_fp(masks, images, tr, True) != translate_fp(masks, images, tr, False)
    assert translate_fp(masks, images, tr, True) != translate_fp(masks, images[:1], tr, True)


# --------------------------------------------------------------------------- kill -9


_KILLED_CLASSIFIER = """
import sys, time
import torch
sys.path.insert(0, sys.argv[2])
torch.set_num_threads(1)
import nanoseg.classify.network as network
from test_checkpoint import _classify_run, _classify_samples
real = network.sample_batch
def slow(*args, **kwargs):  # time to be killed mid-training; the draws are the same
    time.sleep(0.15)
    return real(*args, **kwargs)
network.sample_batch = slow
from pathlib import Path
_classify_run(_classify_samples(), Path(sys.argv[1]), steps=int(sys.argv[3]))
"""


def test_classifier_killed_with_sigkill_resumes_exactly(tmp_path, caplog):
    steps = 12
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_CLASSIFIER, str(tmp_path / "a"),
                             str(Path(__file__).parent), str(steps)], env=env)
    deadline = time.time() + 120
    while not (tmp_path / "a" / "classify.pt").exists():
        assert time.time() < deadline and proc.poll() is None, "the training never wrote a checkpoint"
        time.sleep(0.02)
    time.sleep(0.2)  # into the steps after it (or the next checkpoint's write)
    assert proc.poll() is None, "the training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    with caplog.at_level("INFO", logger="nanoseg"):
        resumed, net = _classify_run(_classify_samples(), tmp_path / "a", steps=steps)
    assert "classify: resuming training from step" in caplog.text
    assert "resuming training from step 0 " not in caplog.text
    full, full_net = _classify_run(_classify_samples(), tmp_path / "b", steps=steps)
    np.testing.assert_allclose(resumed, full, rtol=1e-4)
    for a, b in zip(net, full_net):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
