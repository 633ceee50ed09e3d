"""Self-training on the real micrographs: pseudo-labels, fine-tuning, the stage and its resume."""

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
from skimage.draw import disk

torch = pytest.importorskip("torch")

from nanoseg.config import build_config  # noqa: E402
from nanoseg.segment import BACKGROUND, BOUNDARY, IGNORE, INTERIOR, Pair, train  # noqa: E402
from nanoseg.segment.adapt import prior_area_range, pseudo_labels  # noqa: E402


def _config(**adapt):
    return build_config({
        "segment": {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 48, "batch_size": 2,
                    "val_every": 3, "bf16": False, "min_distance_px": 3, "min_size_px": 5,
                    "learning_rate": 3e-3},
        "adapt": {"rounds": 2, "steps": 6, **adapt},
    }, profile="demo")


def _three_class(labels: np.ndarray) -> np.ndarray:
    """Confident class probabilities of a label image: interior inside, background outside."""
    from nanoseg.segment import make_target

    target = make_target(labels, "three_class", 2)
    probs = np.full((3, *labels.shape), 0.02, np.float32)
    for c in (BACKGROUND, INTERIOR, BOUNDARY):
        probs[c][target == c] = 0.96
    return probs


def test_pseudo_labels_keep_confident_convex_particles_only():
    labels = np.zeros((80, 120), np.int32)
    labels[disk((20, 20), 9)] = 1                       # confident, convex
    labels[disk((20, 60), 9)] = 2                       # convex, but the views disagree on it
    labels[50:58, 20:50] = 3                            # an L, one particle to the watershed: not convex,
    labels[50:75, 20:28] = 3                            # as merges of particles in a row or a bend are
    labels[disk((60, 95), 3)] = 4                       # far smaller than the size prior allows
    probs = _three_class(labels)
    agreement = np.ones(labels.shape, np.float32)
    agreement[labels == 2] = 0.6
    agreement[70:80, 100:120] = 0.5                     # uncertain background
    cfg = _config()
    instances, target, stats = pseudo_labels(probs, agreement, "three_class", cfg.segment, cfg.adapt,
                                             area_range_px=(100.0, 1000.0))
    assert stats["particles"] == 4 and stats["confident"] == 1
    assert instances.max() == 1 and np.array_equal(instances > 0, labels == 1)
    # the confident particle is learned, the others and their rims are ignored
    assert set(np.unique(target[labels == 1])) <= {INTERIOR, BOUNDARY}
    for other in (2, 3, 4):
        assert np.all(target[labels == other] == IGNORE)
    assert np.all(target[70:80, 100:120] == IGNORE)
    assert np.all(target[2:6, 100:110] == BACKGROUND)   # certain background is learned
    assert 0 < stats["ignored_fraction"] < 0.5


def test_pseudo_labels_leave_out_particles_a_finer_split_divides():
    # a small particle on a big one: one region, its interior maximum only faintly separate
    labels = np.zeros((60, 80), np.int32)
    labels[disk((30, 30), 10)] = 1
    labels[disk((30, 44), 7)] = 1
    probs = _three_class(labels)
    h = _config().segment.marker_h
    probs[INTERIOR][probs[INTERIOR] > 0.5] = 0.9 - 0.75 * h   # the saddle: 0.75 h below the small one's top
    probs[INTERIOR][disk((30, 28), 4)] = 0.96
    probs[INTERIOR][disk((30, 46), 2)] = 0.9
    agreement = np.ones(labels.shape, np.float32)
    off, on = _config(split_check=1.0), _config(split_check=0.5)
    _, _, stats_off = pseudo_labels(probs, agreement, "three_class", off.segment, off.adapt, (50.0, 2000.0))
    instances, target, stats_on = pseudo_labels(probs, agreement, "three_class", on.segment, on.adapt, (50.0, 2000.0))
    assert stats_off["particles"] == stats_on["particles"] == 1 and stats_off["confident"] == 1
    assert stats_on["confident"] == 0 and instances.max() == 0 and np.all(target[labels == 1] == IGNORE)
    # a particle with one clear maximum is not touched by the check
    single = np.zeros((40, 40), np.int32)
    single[disk((20, 20), 9)] = 1
    _, _, stats = pseudo_labels(_three_class(single), np.ones(single.shape, np.float32), "three_class", on.segment,
                                on.adapt, (50.0, 2000.0))
    assert stats["confident"] == 1


def test_prior_area_range_uses_the_whole_particles(tmp_path):
    import pandas as pd

    pd.DataFrame({"area_px": [100, 200, 300, 5, 6], "whole": [True, True, True, False, False]}).to_csv(
        tmp_path / "particles.csv", index=False)
    assert prior_area_range(tmp_path, (0.5, 2.0)) == (100.0, 400.0)
    assert prior_area_range(tmp_path / "missing", (0.5, 2.0)) is None


def _disc_pairs(n: int = 3, seed: int = 0) -> list[Pair]:
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(n):
        labels = np.zeros((64, 64), np.int32)
        for i, (r, c) in enumerate([(18, 18), (20, 46), (46, 24), (44, 48)], start=1):
            labels[disk((r + rng.integers(-3, 4), c + rng.integers(-3, 4)), 7)] = i
        image = (np.where(labels > 0, 0.8, 0.2) + rng.normal(0, 0.03, labels.shape)).astype(np.float32)
        pairs.append(Pair(np.clip(image, 0, 1), labels, f"p{k}"))
    return pairs


def test_fine_tuning_starts_from_the_given_net_and_learns_from_extra_pairs(tmp_path):
    cfg = _config().segment
    pairs = _disc_pairs()
    base = train(pairs, cfg, tmp_path / "base", steps=3, rng=np.random.default_rng(0))
    real = _disc_pairs(1, seed=5)[0]
    target = np.full(real.instances.shape, IGNORE, np.uint8)  # nothing to learn from this one...
    extra = [Pair(real.image, real.instances, "real:a", target)]
    tuned = train(pairs, cfg, tmp_path / "tuned", steps=3, rng=np.random.default_rng(0), extra=extra,
                  extra_fraction=0.5, init_from=base)
    from nanoseg import nets

    _, meta = nets.load(tuned)
    assert meta["extra_pairs"] == ["real:a"] and meta["init_from"] == str(base)
    # Starting weights matter: a fine-tuning of another start does not resume this checkpoint.
    other = train(pairs, cfg, tmp_path / "other", steps=3, rng=np.random.default_rng(9))
    from nanoseg.segment import training_fingerprint

    assert training_fingerprint(pairs, cfg, None, extra, 0.5, base) != training_fingerprint(
        pairs, cfg, None, extra, 0.5, other)
    assert training_fingerprint(pairs, cfg, None) == training_fingerprint(pairs, cfg, None, (), 0.0, None)
    with pytest.raises(Exception, match="extra_fraction"):
        train(pairs, cfg, tmp_path / "bad", steps=1, extra=extra, extra_fraction=1.0)


def _setup_run(root: Path, rounds: int = 2, steps: int = 6, **adapt: object) -> Path:
    """A run folder with finished pairs, masks and segment stages on tiny disc micrographs."""
    import tifffile

    from nanoseg.io import read_micrograph
    from nanoseg.segment import segment_micrographs

    images = root / "images"
    images.mkdir(parents=True)
    for k, pair in enumerate(_disc_pairs(3, seed=11)):
        tifffile.imwrite(images / f"m{k}.tif", (pair.image * 255).astype(np.uint8),
                         resolution=(1e7 / 2.0, 1e7 / 2.0), resolutionunit="CENTIMETER")
    run = root / "run"
    (run / "pairs").mkdir(parents=True)
    for pair in _disc_pairs(4):
        np.savez(run / "pairs" / f"pair_{pair.name}.npz", image=pair.image, instances=pair.instances)
    (run / "masks").mkdir()
    (run / "masks" / "particles.csv").write_text("area_px,whole\n150,True\n160,True\n")
    config = _config(rounds=rounds, steps=steps, **adapt)
    config = config.model_copy(update={"data": config.data.model_copy(update={"images": str(images)})})
    (root / "config.json").write_text(config.model_dump_json())
    model = train(_disc_pairs(4), config.segment, run / "segment", steps=100, rng=np.random.default_rng(0),
                  pixel_size_nm=2.0)
    segment_micrographs(model, [read_micrograph(p) for p in sorted(images.glob("*.tif"))], run / "segment",
                        config.segment)
    return root


def _run_adapt(root: str | Path) -> None:
    """Run the adapt stage of the run folder made by :func:`_setup_run` (also from a subprocess)."""
    from nanoseg import pipeline
    from nanoseg.config import Config
    from nanoseg.segment import adapt

    root = Path(root)
    config = Config.model_validate_json((root / "config.json").read_text())
    stage = next(s for s in pipeline.STAGES if s.name == "adapt")
    ctx = pipeline.StageContext(config=config, run_dir=root / "run", stage=stage)
    ctx.out_dir.mkdir(exist_ok=True)
    adapt.run_stage(ctx)


def test_adapt_off_passes_the_segment_stage_on(tmp_path):
    root = _setup_run(tmp_path, rounds=0)
    _run_adapt(root)
    out = root / "run" / "adapt"
    assert (out / "model.pt").read_bytes() == (root / "run" / "segment" / "model.pt").read_bytes()
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["m0.tif", "m1.tif", "m2.tif"]
    assert json.loads((out / "rounds.json").read_text())["rounds"] == []


def test_adapt_survives_kill_9_and_resumes(tmp_path):
    # Open gates: this test is about resuming, and every round must have pseudo-labels to train on
    # whatever the tiny setup net finds (the gates have tests of their own above).
    root = _setup_run(tmp_path, rounds=2, steps=30, min_agreement=0.5, min_solidity=0.0, area_range=(0.01, 100.0))
    out = root / "run" / "adapt"
    script = "import sys; from test_adapt import _run_adapt; _run_adapt(sys.argv[1])"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script, str(root)], env=env)
    deadline = time.time() + 300
    while not (out / "round2" / "checkpoint.pt").exists():  # round 1 done, round 2 training
        assert time.time() < deadline and proc.poll() is None, "adapt never reached round 2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = (out / "round1" / "round.json").read_text()
    round1_mtime = (out / "round1" / "model.pt").stat().st_mtime_ns
    assert not (out / "rounds.json").exists()

    subprocess.run([sys.executable, "-c", script, str(root)], env=env, check=True, timeout=600)
    assert (out / "round1" / "model.pt").stat().st_mtime_ns == round1_mtime  # not redone
    rounds = json.loads((out / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[0] == json.loads(first)
    assert all(r["pseudo_labelled"] > 0 for r in rounds)
    assert (out / "model.pt").read_bytes() == (out / "round2" / "model.pt").read_bytes()
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["m0.tif", "m1.tif", "m2.tif"]
    assert (out / "round1" / "pseudo_labels.png").is_file()
