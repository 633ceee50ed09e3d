"""Stages 3-4: CycleGAN nets and training, image pool, artifact filter, pairs, GAN segmentation, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage
from skimage.measure import label

from nanoseg import nets, translate
from nanoseg.config import build_config
from nanoseg.errors import NanosegError
from nanoseg.io import write_tiff
from nanoseg.labels import border_labels
from nanoseg.pipeline import STAGES, StageContext
from nanoseg.tiles import random_tiles
from nanoseg.translate import (
    CycleGAN,
    FakeMask,
    ImagePool,
    filter_artifacts,
    iter_pairs,
    lr_factor,
    to_net,
)

TINY = {"tile_size_px": 32, "generator_width": 4, "discriminator_width": 8, "n_res_blocks": 1, "bf16": False, "realism_steps": 20}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def disc_instances(rng: np.random.Generator, shape=(96, 96), n=14, radius=(4, 9)) -> np.ndarray:
    """Non-overlapping discs (at least 2 px apart), labelled 1..k: 4-connected labels == instances."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inst = np.zeros(shape, np.int32)
    placed: list[tuple[int, int, int]] = []
    for _ in range(200):
        if len(placed) == n:
            break
        r = int(rng.integers(*radius))
        cy, cx = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 2) ** 2 for y, x, q in placed):
            placed.append((cy, cx, r))
            inst[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = len(placed)
    return inst


def fake_micrograph(inst: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = ndimage.gaussian_filter((inst > 0).astype(np.float32) * 0.6 + 0.2, 1.0)
    return np.clip(image + rng.normal(0, 0.03, inst.shape), 0, 1).astype(np.float32)


def tiny_cfg(**extra):
    return build_config({"translate": {**TINY, **extra}}).translate


# --------------------------------------------------------------------------- nets


def test_generator_keeps_shape_and_skip_passes_input_through():
    x = torch.rand(2, 1, 36, 44) * 2 - 1
    g = nets.create("resnet_generator", in_channels=1, out_channels=1, width=4, n_res_blocks=2, skip=False)
    assert g(x).shape == x.shape
    assert float(g(x).detach().abs().max()) <= 1.0
    gs = nets.create("resnet_generator", in_channels=1, out_channels=1, width=4, n_res_blocks=2, skip=True)
    last = gs.body[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    torch.testing.assert_close(gs(x), torch.tanh(x))
    d = nets.create("patch_discriminator", in_channels=1, width=8, n_layers=3)
    assert d(torch.rand(1, 1, 128, 128)).shape == (1, 1, 14, 14)  # 70x70 PatchGAN on 128 px


def _grid_unevenness(upsample: str, seeds: int = 6) -> float:
    """Max/min output variance over the 16 phases of a 4-px grid, untrained generators, noise in."""
    from nanoseg.translate.cyclegan import _init_weights

    power = np.zeros((4, 4))
    for seed in range(seeds):
        torch.manual_seed(seed)
        g = nets.create("resnet_generator", width=8, n_res_blocks=2, upsample=upsample)
        g.apply(_init_weights)
        with torch.no_grad():
            y = g(torch.rand(4, 1, 64, 64) * 2 - 1)[:, 0].numpy()[:, 8:-8, 8:-8]
        y = y - y.mean()
        for i in range(4):
            for j in range(4):
                power[i, j] += (y[:, i::4, j::4] ** 2).mean()
    return float(power.max() / power.min())


def test_resize_upsampling_paints_no_grid():
    # Stride-2 transposed convolutions give the output pixels 1, 2 or 4 kernel taps by phase: a
    # 4-px checkerboard before any training; nearest resize + convolution treats all alike.
    assert _grid_unevenness("transpose") > 1.3
    assert _grid_unevenness("resize") < 1.2
    with pytest.raises(ValueError, match="upsample"):
        nets.create("resnet_generator", upsample="bilinear")


def test_one_training_step_changes_all_four_networks():
    rng = np.random.default_rng(0)
    model = CycleGAN(tiny_cfg(), "cpu", rng)
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in model.nets.items()}
    inst = disc_instances(rng, (64, 64))
    losses = model.train_step(to_net(random_tiles([inst > 0], 2, 32, rng, augment=True), "cpu"),
                              to_net(random_tiles([fake_micrograph(inst, rng)], 2, 32, rng, augment=True), "cpu"))
    assert all(np.isfinite(v) for v in losses.values())
    for key, net in model.nets.items():
        changed = [not torch.equal(a, b) for a, b in zip(before[key], net.parameters())]
        # Biases right before an instance norm get no gradient; every weight tensor must move.
        assert sum(changed) >= len(changed) // 2, key
        assert not torch.equal(before[key][0], next(net.parameters())), key
    assert model.step == 1


def test_cycle_loss_falls():
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    cfg = tiny_cfg(learning_rate=2e-3, steps=1000)
    masks = [disc_instances(rng) > 0 for _ in range(3)]
    images = [fake_micrograph(disc_instances(rng), rng) for _ in range(3)]
    model = CycleGAN(cfg, "cpu", rng)
    cycle = []
    for _ in range(30):
        losses = model.train_step(to_net(random_tiles(masks, 2, 32, rng, augment=True), "cpu"),
                                  to_net(random_tiles(images, 2, 32, rng, augment=True), "cpu"))
        cycle.append(losses["cycle_a"] + losses["cycle_b"])
    assert np.mean(cycle[-8:]) < 0.7 * np.mean(cycle[:4])  # seeds 1-3 give 0.29-0.47


def test_lr_factor_is_linear_after_decay_start():
    assert lr_factor(0, 100, 0.5) == 1.0
    assert lr_factor(49, 100, 0.5) == 1.0
    assert lr_factor(50, 100, 0.5) == pytest.approx(1 - 1 / 51)
    assert lr_factor(99, 100, 0.5) == pytest.approx(1 / 51)
    factors = [lr_factor(s, 100, 0.5) for s in range(50, 100)]
    assert np.allclose(np.diff(factors), -1 / 51)


# --------------------------------------------------------------------------- image pool


def test_image_pool_disabled_returns_input():
    pool = ImagePool(0)
    x = torch.rand(3, 1, 4, 4)
    assert pool.query(x) is x


def test_image_pool_fills_then_swaps_half_the_time():
    pool = ImagePool(5, np.random.default_rng(0))
    first = torch.arange(5.0).view(5, 1, 1, 1)
    torch.testing.assert_close(pool.query(first), first)  # filling: returned as is, all stored
    assert [float(t) for t in pool.images] == [0, 1, 2, 3, 4]
    expected = [0.0, 1.0, 2.0, 3.0, 4.0]  # what the pool should hold
    n_from_pool = 0
    for k in range(400):
        value = 100.0 + k
        out = float(pool.query(torch.full((1, 1, 1, 1), value)))
        if out != value:  # a stored past fake came back, and the new one took its place
            assert out in expected
            expected[expected.index(out)] = value
            n_from_pool += 1
        assert [float(t) for t in pool.images] == expected
    assert 160 < n_from_pool < 240  # probability 0.5


def test_image_pool_state_round_trip():
    pool = ImagePool(3, np.random.default_rng(3))
    pool.query(torch.rand(4, 1, 2, 2))
    other = ImagePool(3, np.random.default_rng(99))
    other.load_state_dict(pool.state_dict())
    x = torch.rand(6, 1, 2, 2)
    torch.testing.assert_close(pool.query(x), other.query(x))


# --------------------------------------------------------------------------- artifact filter


def _filter_scene():
    rng = np.random.default_rng(5)
    inst = disc_instances(rng, (96, 96), n=8)
    visible = inst.copy()
    ghosts = [3, 6]  # in the mask, but not drawn in the image: artifacts
    visible[np.isin(inst, ghosts)] = 0
    return inst, fake_micrograph(visible, rng), ghosts


@pytest.mark.parametrize("method", ["li", "otsu", "mean", "median"])
def test_filter_drops_instances_on_background(method):
    inst, image, ghosts = _filter_scene()
    kept, dropped = filter_artifacts(image, inst, method=method)
    assert sorted(dropped) == ghosts
    assert set(np.unique(kept)) == set(np.unique(inst)) - set(ghosts)
    np.testing.assert_array_equal(kept[~np.isin(inst, ghosts)], inst[~np.isin(inst, ghosts)])


def test_filter_dark_particles():
    inst, image, ghosts = _filter_scene()
    _, dropped = filter_artifacts(1.0 - image, inst, dark_particles=True)
    assert sorted(dropped) == ghosts
    # Dark particles judged as bright ones: the visible ones are the "artifacts" now.
    _, wrong = filter_artifacts(1.0 - image, inst, dark_particles=False)
    assert set(wrong) == set(np.unique(inst)) - {0} - set(ghosts)


def test_filter_edge_cases():
    empty = np.zeros((8, 8), np.int32)
    kept, dropped = filter_artifacts(np.random.default_rng(0).random((8, 8)), empty)
    assert dropped == [] and not kept.any()
    with pytest.raises(NanosegError, match="artifact_threshold"):
        translate.artifact_threshold(np.zeros((4, 4)), "triangle")
    with pytest.raises(ValueError):
        filter_artifacts(np.zeros((4, 4)), np.zeros((4, 5), np.int32))


# --------------------------------------------------------------------------- pairs


class HidingTranslator:
    """Draws every particle except those with label 2: a translator that 'forgets' particles."""

    def __call__(self, instances, rngs):
        return [fake_micrograph(np.where(inst == 2, 0, inst), rng) for inst, rng in zip(instances, rngs)]


def _fake_masks(n=2, shape=(64, 96)):
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        inst = disc_instances(rng, shape, n=10)
        out.append(FakeMask(i, inst, frozenset(set(np.unique(inst)) - {0} - set(border_labels(inst)))))
    return out


def test_generated_pairs_are_aligned():
    masks = _fake_masks()
    pairs = list(iter_pairs(masks, HidingTranslator(), n_pairs=5, seed=0, batch_size=2))
    assert [p["pair"] for p in pairs] == list(range(5))
    for p in pairs:
        assert p["image"].dtype == np.float32 and p["image"].min() >= 0 and p["image"].max() <= 1
        assert p["binary"].dtype == np.uint8 and set(np.unique(p["binary"])) <= {0, 1}
        assert p["whole"].dtype == np.uint8 and set(np.unique(p["whole"])) <= {0, 1}
        assert p["instances"].shape == p["binary"].shape == p["whole"].shape == p["image"].shape
        np.testing.assert_array_equal(label(p["binary"], connectivity=1), p["instances"])
        assert not (p["whole"] & (1 - p["binary"])).any()  # whole pixels are particle pixels
        assert set(p["dropped_labels"]) <= {2}  # only the particle that was never drawn
        # the kept particles are bright in the fake image
        assert p["image"][p["binary"] > 0].mean() > p["image"][p["binary"] == 0].mean() + 0.2
    assert pairs[0]["dropped_labels"] == [2] and pairs[1]["dropped_labels"] == [2]
    # beyond the number of masks: random crops (3/4 of the tile, multiple of 4) with flips
    assert pairs[0]["image"].shape == (64, 96) and pairs[2]["image"].shape == (48, 72)
    # crops cut particles: those touching the crop border are no longer whole
    for p in pairs[2:]:
        border = np.unique(np.concatenate([p["instances"][0], p["instances"][-1], p["instances"][:, 0], p["instances"][:, -1]]))
        assert not np.isin(p["instances"], border[border > 0]).__and__(p["whole"] > 0).any()
    # pair i depends on (seed, i) only
    again = list(iter_pairs(masks, HidingTranslator(), n_pairs=5, seed=0, batch_size=3))
    np.testing.assert_array_equal(again[4]["image"], pairs[4]["image"])


def test_gan_segment_keeps_shape():
    g = nets.create("resnet_generator", in_channels=1, out_channels=1, width=4, n_res_blocks=1, skip=False)
    image = np.random.default_rng(0).random((50, 70)).astype(np.float32)
    prob = translate.gan_segment(image, g)
    assert prob.shape == image.shape and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1
    prob2, instances, dropped = translate.gan_segment_instances(image, g, threshold=float(np.median(prob)))
    np.testing.assert_array_equal(prob, prob2)
    assert instances.shape == image.shape and isinstance(dropped, list)


# --------------------------------------------------------------------------- stages on a tiny run folder


def make_run(tmp_path: Path, n_masks=3, n_images=2, shape=(64, 96)) -> Path:
    """A run folder with a finished-looking masks/ stage and a folder of micrographs."""
    rng = np.random.default_rng(11)
    run = tmp_path / "run"
    masks = run / "masks"
    masks.mkdir(parents=True)
    rows = []
    for i in range(n_masks):
        inst = disc_instances(rng, shape, n=10)
        write_tiff(masks / f"mask_{i:04d}.tif", (inst > 0).astype(np.uint8) * 255)
        write_tiff(masks / f"instances_{i:04d}.tif", inst.astype(np.uint16))
        border = set(border_labels(inst))
        for lab in np.unique(inst)[1:]:
            rows.append({"tile": i, "label": int(lab), "area_px": int((inst == lab).sum()), "full_area_px": int((inst == lab).sum()),
                         "visible_fraction": 1.0, "touches_border": lab in border, "whole": lab not in border and lab != 1})
    with open(masks / "particles.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    images = tmp_path / "images"
    for i in range(n_images):
        write_tiff(images / f"real_{i}.tif", (fake_micrograph(disc_instances(rng, (80, 112)), rng) * 255).astype(np.uint8))
    return run


def ctx_for(run: Path, stage: str, cfg) -> StageContext:
    st = next(s for s in STAGES if s.name == stage)
    (run / stage).mkdir(exist_ok=True)
    return StageContext(config=cfg, run_dir=run, stage=st, device=torch.device("cpu"))


def run_config(run: Path, **translate_values):
    data = {"images": str(run.parent / "images"), "info_bar_rows": 0}
    return build_config({"data": data, "translate": {**TINY, **translate_values}}, profile="quick")


def test_cyclegan_stages_end_to_end_with_resume(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    cfg = run_config(run, method="cyclegan", steps=6, checkpoint_every=3, n_pairs=5, batch_size=2, pool_size=2,
                     generator_skip=True)
    # Interrupt the first attempt after step 4 (a checkpoint exists at step 3) ...
    real_step = CycleGAN.train_step
    calls = []

    def failing_step(self, a, b):
        calls.append(self.step)
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self, a, b)

    monkeypatch.setattr(CycleGAN, "train_step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        translate.run_train_stage(ctx_for(run, "translate", cfg))
    out = run / "translate"
    assert (out / translate.CHECKPOINT).is_file() and not (out / translate.MASK_TO_IMAGE).exists()
    # ... then the rerun resumes at step 3 instead of starting over.
    calls.clear()
    monkeypatch.setattr(CycleGAN, "train_step", real_step)
    monkeypatch.setattr(CycleGAN, "train_step", lambda self, a, b: (calls.append(self.step), real_step(self, a, b))[1])
    translate.run_train_stage(ctx_for(run, "translate", cfg))
    assert calls == [3, 4, 5]
    for name in (translate.MASK_TO_IMAGE, translate.IMAGE_TO_MASK, "losses.csv", "losses.png", "samples/step_000003.png",
                 "samples/step_000006.png"):
        assert (out / name).is_file(), name
    assert not (out / translate.CHECKPOINT).exists()
    with open(out / "losses.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]
    g, meta = nets.load(out / translate.MASK_TO_IMAGE)
    assert g.init_kwargs["skip"] is True and meta["input"] == "binary mask"
    # Killed after the final save but before the pipeline's done marker: no retraining.
    calls.clear()
    translate.run_train_stage(ctx_for(run, "translate", cfg))
    assert calls == []

    translate.run_pairs_stage(ctx_for(run, "pairs", cfg))
    pairs_dir = run / "pairs"
    files = sorted(pairs_dir.glob("pair_*.npz"))
    assert len(files) == 5
    with np.load(files[0]) as pair:
        assert set(pair.files) == {"image", "instances", "binary", "whole"}
        assert pair["image"].shape == (64, 96) and pair["image"].dtype == np.float32
        np.testing.assert_array_equal(label(pair["binary"], connectivity=1), pair["instances"])
    with open(pairs_dir / "manifest.csv") as fh:
        manifest = list(csv.DictReader(fh))
    assert [int(r["source_tile"]) for r in manifest] == [0, 1, 2, 0, 1]
    summary = json.loads((pairs_dir / "filter.json").read_text())
    assert summary["n_pairs"] == 5 and len(summary["pairs"]) == 5
    assert sum(p["n_dropped"] for p in summary["pairs"]) == summary["instances_dropped"]
    assert (pairs_dir / "contact_sheet.png").is_file()


def test_render_stages_and_whole_from_particles_csv(tmp_path):
    run = make_run(tmp_path)
    cfg = run_config(run, method="render", n_pairs=4, pair_format="tiff")
    translate.run_train_stage(ctx_for(run, "translate", cfg))
    params = json.loads((run / "translate" / translate.RENDERER).read_text())
    assert 0 <= params["background_level"] < params["particle_level"] <= 1
    assert (run / "translate" / "renderer_sample.png").is_file()
    translate.run_pairs_stage(ctx_for(run, "pairs", cfg))
    assert len(list((run / "pairs").glob("pair_*.npz"))) == 4  # what segment/classify read
    assert len(list((run / "pairs" / "tiff").glob("pair_*_image.tif"))) == 4
    pair = translate.read_pair(run / "pairs", 0)
    assert pair["image"].dtype == np.float32 and pair["binary"].dtype == np.uint8
    np.testing.assert_array_equal(tifffile.imread(run / "pairs" / "tiff" / "pair_0000_instances.tif"), pair["instances"])
    inst0 = translate.load_fake_masks(run / "masks")[0].instances
    # label 1 is not whole in particles.csv, so none of its pixels may be marked whole
    assert not pair["whole"][inst0 == 1].any()
    assert pair["whole"].any()
    np.testing.assert_array_equal(label(pair["binary"], connectivity=1), pair["instances"])
    # The fakes' realism against the run's micrographs, for the report.
    realism = json.loads((run / "pairs" / "realism.json").read_text())
    assert 0.0 <= realism["classifier_accuracy"] <= 1.0 and realism["translator"] == "render"
    assert realism["classifier_steps"] == cfg.translate.realism_steps > 0


def test_refine_renders_then_trains_the_cyclegan_on_rendered_images(tmp_path):
    from typer.testing import CliRunner

    from nanoseg.cli import app

    run = make_run(tmp_path)
    cfg = run_config(run, method="refine", steps=2, checkpoint_every=5, n_pairs=3, realism_steps=5)
    translate.run_train_stage(ctx_for(run, "translate", cfg))
    out = run / "translate"
    assert (out / translate.RENDERER).is_file() and (out / translate.MASK_TO_IMAGE).is_file()
    g, meta = nets.load(out / translate.MASK_TO_IMAGE)
    # A residual generator on rendered fakes, with the grid-free upsampling.
    assert meta["input"] == "rendered micrograph"
    assert g.init_kwargs["skip"] is True and g.init_kwargs["upsample"] == "resize"
    translator = translate.load_translator(out, cfg.translate)
    assert isinstance(translator, translate.RefineTranslator)
    inst = translate.load_fake_masks(run / "masks")[0].instances
    rendered = translator.render([inst], [np.random.default_rng(3)])[0]
    refined = translator([inst], [np.random.default_rng(3)])[0]
    assert refined.shape == inst.shape and 0 <= refined.min() and refined.max() <= 1
    assert not np.array_equal(refined, rendered)
    translate.run_pairs_stage(ctx_for(run, "pairs", cfg))
    assert len(list((run / "pairs").glob("pair_*.npz"))) == 3
    assert json.loads((run / "pairs" / "realism.json").read_text())["translator"] == "refine"
    # The CLI recognises a refining generator from its folder, whatever the config's method says.
    runner = CliRunner()
    res = runner.invoke(app, ["translate", "generate", str(run / "masks"), "--model", str(out), "--out",
                              str(tmp_path / "pairs"), "--n", "2", "--set", "translate.realism_steps=0"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "pairs").glob("pair_*.npz"))) == 2
    lone = tmp_path / "generator_only"
    lone.mkdir()
    (lone / translate.MASK_TO_IMAGE).write_bytes((out / translate.MASK_TO_IMAGE).read_bytes())
    res = runner.invoke(app, ["translate", "generate", str(run / "masks"), "--model", str(lone)])
    assert isinstance(res.exception, NanosegError) and translate.RENDERER in str(res.exception)


def test_missing_inputs_are_user_errors(tmp_path):
    with pytest.raises(NanosegError, match="mask_"):
        translate.load_fake_masks(tmp_path)
    with pytest.raises(NanosegError, match="renderer"):
        translate.load_translator(tmp_path, build_config({"translate": {"method": "render"}}).translate)


def test_cli_generate_and_segment(tmp_path):
    from typer.testing import CliRunner

    from nanoseg.cli import app

    run = make_run(tmp_path, n_masks=2)
    runner = CliRunner()
    res = runner.invoke(app, ["translate", "generate", str(run / "masks"), "--model", str(tmp_path / "nothing")])
    assert isinstance(res.exception, NanosegError) and "translate train" in str(res.exception)
    cfg = run_config(run, method="cyclegan", steps=2, checkpoint_every=5)
    translate.train_translator(cfg, run / "masks", run / "translate")
    res = runner.invoke(app, ["translate", "generate", str(run / "masks"), "--model", str(run / "translate"),
                              "--out", str(tmp_path / "pairs"), "--n", "3", "--set", "translate.tile_size_px=32"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "pairs").glob("pair_*.npz"))) == 3
    res = runner.invoke(app, ["translate", "segment", str(tmp_path / "images"), "--model",
                              str(run / "translate" / translate.IMAGE_TO_MASK), "--out", str(tmp_path / "seg"),
                              "--set", "data.info_bar_rows=0"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "seg" / "binary").iterdir()) == ["real_0.tif", "real_1.tif"]
    assert (tmp_path / "seg" / "probability" / "real_0.tif").is_file()


def test_fake_masks_without_instances_or_particles_csv(tmp_path):
    rng = np.random.default_rng(2)
    inst = disc_instances(rng, (64, 64), n=12)
    write_tiff(tmp_path / "mask_0003.tif", (inst > 0).astype(np.uint8) * 255)
    (fm,) = translate.load_fake_masks(tmp_path)
    assert fm.index == 3 and fm.whole_labels is None
    np.testing.assert_array_equal(fm.instances, label(inst > 0, connectivity=1))
    whole = fm.whole_pixels(fm.instances)
    border = border_labels(fm.instances)
    assert border.size and not whole[np.isin(fm.instances, border)].any()
    assert whole[(fm.instances > 0) & ~np.isin(fm.instances, border)].all()
