"""Segmentation stage: targets, post-processing, training on manual pairs, inference, ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.draw import disk

from nanoseg import nets
from nanoseg.config import build_config
from nanoseg.errors import NanosegError
from nanoseg.metrics import detection_scores
from nanoseg.segment import (
    BACKGROUND,
    BOUNDARY,
    INTERIOR,
    Pair,
    export_onnx,
    instances_from_probabilities,
    load_pairs,
    make_target,
    n_outputs,
    predict_probabilities,
    probabilities_from_logits,
    segment_image,
    segment_micrographs,
    train,
)
from nanoseg.segment.data import OFFSET_SCALE_PX


def _two_touching_squares() -> np.ndarray:
    labels = np.zeros((20, 30), np.int32)
    labels[4:16, 3:14] = 1
    labels[4:16, 14:26] = 2  # shares an edge with label 1
    return labels


def test_make_target_three_class_separates_touching_particles():
    labels = _two_touching_squares()
    target = make_target(labels, "three_class", boundary_width_px=2)
    assert target.dtype == np.uint8
    assert set(np.unique(target)) == {BACKGROUND, INTERIOR, BOUNDARY}
    assert np.all(target[labels == 0] == BACKGROUND)
    # The band is 2 px wide on both sides of the shared edge, so the interiors are apart.
    assert np.all(target[4:16, 12:16] == BOUNDARY)
    assert np.all(target[6:14, 5:12] == INTERIOR)
    from skimage.measure import label

    assert label(target == INTERIOR, connectivity=1).max() == 2


def test_make_target_gap_line_is_boundary_and_small_particles_keep_a_core():
    labels = np.zeros((30, 30), np.int32)
    labels[5:15, 5:12] = 1
    labels[5:15, 13:20] = 2  # 1-px background line at column 12
    rr, cc = disk((24, 24), 2.5)
    labels[rr, cc] = 3  # small: a 5-px band would swallow it
    target = make_target(labels, "three_class", boundary_width_px=5)
    assert np.all(target[6:14, 12] == BOUNDARY)
    assert np.any(target[labels == 3] == INTERIOR)


def test_make_target_binary_cuts_touching_particles():
    from skimage.measure import label

    target = make_target(_two_touching_squares(), "binary")
    assert set(np.unique(target)) == {0, 1}
    assert label(target, connectivity=1).max() == 2


def _two_overlapping_discs(shape=(64, 96)) -> tuple[np.ndarray, np.ndarray]:
    """Instances of two overlapping discs (second drawn over the first) and of one disc."""
    two = np.zeros(shape, np.int32)
    two[disk((32, 30), 16, shape=shape)] = 1
    two[disk((32, 58), 16, shape=shape)] = 2
    one = np.zeros(shape, np.int32)
    one[disk((32, 40), 18, shape=shape)] = 1
    return two, one


def _perfect_probs(instances: np.ndarray, kind: str, width: int) -> np.ndarray:
    target = make_target(instances, kind, width)
    if kind == "centres":  # what the net's outputs become: offsets in px
        return np.concatenate([target[:2], target[2:] * OFFSET_SCALE_PX])
    if kind == "binary":
        return (instances > 0).astype(np.float32)[None]  # the overlap is not cut: the watershed must split
    return np.stack([target == c for c in (BACKGROUND, INTERIOR, BOUNDARY)]).astype(np.float32)


@pytest.mark.parametrize("kind", ["three_class", "binary", "centres"])
@pytest.mark.parametrize("giveback", ["expand", "watershed"])
def test_watershed_splits_two_overlapping_discs_and_keeps_one(kind, giveback):
    cfg = build_config({"segment": {"target": kind, "band_giveback": giveback, "boundary_width_px": 3,
                                    "min_distance_px": 7}}).segment
    two, one = _two_overlapping_discs()
    labels_two = instances_from_probabilities(_perfect_probs(two, kind, 3), kind, cfg)
    labels_one = instances_from_probabilities(_perfect_probs(one, kind, 3), kind, cfg)
    assert labels_two.dtype in (np.uint16, np.uint32)
    assert labels_two.max() == 2
    assert labels_one.max() == 1
    # The split follows the true particles.
    assert detection_scores(labels_two, two)["tp"] == 2
    assert detection_scores(labels_one, one)["tp"] == 1


def test_expand_giveback_recovers_true_sizes():
    cfg = build_config({"segment": {"target": "three_class", "band_giveback": "expand", "boundary_width_px": 3}}).segment
    two, _ = _two_overlapping_discs()
    labels = instances_from_probabilities(_perfect_probs(two, "three_class", 3), "three_class", cfg)
    true_area = np.bincount(two.ravel())[1:]
    pred_area = np.bincount(labels.ravel().astype(np.int64))[1:]
    assert np.allclose(np.sort(pred_area), np.sort(true_area), rtol=0.1)


@pytest.mark.parametrize("threshold,h", [(0.4, 0.2), (0.5, 0.1), (0.6, 0.05), (0.3, 0.35), (0.4, 2.0)])
def test_h_maxima_within_region_equal_those_of_the_whole_image(threshold, h):
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    from nanoseg.segment.instances import h_maxima_within

    rng = np.random.default_rng(1)
    field = ndi.gaussian_filter(rng.random((160, 200)), 3)
    interior = ((field - field.min()) / np.ptp(field)).astype(np.float32)
    interior[40, 40] = 0.95  # a one-pixel peak: its crop must still span more than h
    region = (interior > threshold) & (rng.random(interior.shape) > 0.02)
    expected = h_maxima(interior.astype(np.float64), h).astype(bool) & region
    got = h_maxima_within(interior, region, h)
    np.testing.assert_array_equal(got, expected)
    assert got.any() == (h < 1)  # the test can fail: there are maxima to find


@pytest.mark.parametrize("distance", [1, 3, 6])
def test_expand_within_foreground_equals_whole_image_expand(distance):
    from scipy import ndimage as ndi
    from skimage.measure import label
    from skimage.segmentation import expand_labels

    from nanoseg.segment.instances import expand_within

    rng = np.random.default_rng(distance)
    field = ndi.gaussian_filter(rng.random((150, 170)), 2.5)
    foreground = field > np.quantile(field, 0.7)  # many blobs, some a pixel or two apart
    markers = label(foreground & (field > np.quantile(field, 0.85)) & (rng.random(field.shape) > 0.3)).astype(np.int32)
    markers[0:2, 0:2] = markers.max() + 1  # a marker outside the foreground, in a corner
    markers[75, 60], markers[75, 66], foreground[74:77, 58:69] = 500, 501, True  # a tie at (75, 63)
    expected = expand_labels(markers, distance=distance) * foreground
    got = expand_within(markers, foreground, distance)
    np.testing.assert_array_equal(got, expected)
    assert (got != markers * foreground).any()  # the test can fail: the bands do grow


def test_small_fragments_removed():
    cfg = build_config({"segment": {"target": "binary", "min_size_px": 20}}).segment
    probs = np.zeros((1, 40, 40), np.float32)
    probs[0, 5:25, 5:25] = 1.0
    probs[0, 33:36, 33:36] = 1.0  # 9 px speck
    labels = instances_from_probabilities(probs, "binary", cfg)
    assert labels.max() == 1
    assert labels[35, 35] == 0


def test_tiled_inference_matches_whole_image():
    torch.manual_seed(0)
    net = nets.create("unet", in_channels=1, out_channels=3, base_width=4, depth=2).eval()
    image = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    whole = predict_probabilities(net, image, "three_class", bf16=False, tile_px=1024)
    tiled = predict_probabilities(net, image, "three_class", bf16=False, tile_px=48, overlap_px=16)
    assert tiled.shape == whole.shape == (3, 70, 90)
    np.testing.assert_allclose(tiled.sum(axis=0), 1.0, atol=1e-5)
    # Convolutions see less context at tile edges; the blend keeps the difference small.
    assert np.abs(tiled - whole).mean() < 0.05


@pytest.fixture(scope="module")
def manual_pairs(shared_data) -> list[Pair]:
    return load_pairs(shared_data)


def _manual_pairs(pairs: list[Pair], n: int, size: int = 192) -> list[Pair]:
    pairs = pairs[:n]
    # Crops keep the test fast; particle sizes stay those of the real data.
    return [Pair(p.image[:size, :size].copy(), p.instances[:size, :size].copy(), p.name) for p in pairs]


def test_load_pairs_crops_info_bar(manual_pairs):
    pairs = manual_pairs
    assert len(pairs) >= 3
    p = pairs[0]
    assert p.image.shape == p.instances.shape
    assert p.image.shape[0] < 768  # the 56-row info bar is gone from image and mask
    assert p.instances.max() > 50


@pytest.mark.parametrize("kind", ["three_class", "binary", "centres"])
def test_training_steps_lower_the_loss(manual_pairs, tmp_path, kind):
    torch.manual_seed(0)
    pairs = _manual_pairs(manual_pairs, 4)
    cfg = build_config({"segment": {"architecture": "unet", "base_width": 4, "depth": 2, "target": kind,
                                    "tile_size_px": 96, "batch_size": 2, "val_every": 10, "val_fraction": 0.25,
                                    "learning_rate": 3e-3, "bf16": False}}).segment
    model = train(pairs, cfg, tmp_path, steps=30, rng=np.random.default_rng(0), pixel_size_nm=7.34)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (tmp_path / "training.png").is_file()
    net, meta = nets.load(model)
    assert meta["target"] == kind and meta["pixel_size_nm"] == 7.34
    assert meta["config"]["architecture"] == "unet"
    labels, probs = segment_image(net, meta, pairs[0].image, cfg, pixel_size_nm=7.34)
    assert labels.shape == pairs[0].image.shape


def _noisy_disc_pairs(prefix: str = "p") -> tuple[list[Pair], np.ndarray, np.ndarray]:
    """Three noisy copies of a two-disc image named ``<prefix><i>``: (pairs, instances, clean image)."""
    rng = np.random.default_rng(0)
    inst = np.zeros((64, 64), np.int32)
    inst[disk((20, 20), 8)] = 1
    inst[disk((40, 44), 10)] = 2
    image = (inst > 0).astype(np.float32) * 0.6 + 0.2
    pairs = [Pair(image + rng.normal(0, 0.05, image.shape).astype(np.float32), inst, f"{prefix}{i}") for i in range(3)]
    return pairs, inst, image


def _tiny_config(**values):
    return build_config({"segment": {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 48,
                                     "batch_size": 2, "val_every": 4, "bf16": False, **values}}).segment


def test_training_resumes_from_checkpoint(tmp_path):
    pairs, _, _ = _noisy_disc_pairs()
    cfg = _tiny_config(threshold="auto")
    train(pairs, cfg, tmp_path, steps=4, rng=np.random.default_rng(1))
    train(pairs, cfg, tmp_path, steps=8, rng=np.random.default_rng(1))
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["step"] for h in history] == [4, 8]


def test_the_model_is_the_checkpoint_with_the_lowest_validation_loss(tmp_path, monkeypatch):
    """Foreground IoU can peak early while the loss (which scores the interior/boundary split too)
    still falls: the saved model is the lowest-loss one."""
    from nanoseg import segment

    records = iter([{"val_loss": 0.30, "val_iou": 0.96}, {"val_loss": 0.10, "val_iou": 0.94}])
    monkeypatch.setattr(segment.training, "_validate", lambda *args, **kwargs: next(records))
    pairs, _, _ = _noisy_disc_pairs()
    model = train(pairs, _tiny_config(), tmp_path, steps=8, rng=np.random.default_rng(1))
    meta = nets.load(model)[1]
    assert meta["step"] == 8 and meta["val_loss"] == 0.10


def test_auto_threshold_is_the_one_the_validation_pairs_choose(tmp_path, monkeypatch):
    """threshold='auto' sweeps 0.05-0.95 on the validation pairs and stores the best threshold in the
    model. Particles at probability 0.18 on a background of 0.12 are found at 0.15 alone: the
    fallback 0.5 finds none, 0.10 merges everything into one foreground."""
    from nanoseg import segment

    pairs, inst, _ = _noisy_disc_pairs()
    probs = np.where(inst > 0, 0.18, 0.12).astype(np.float32)[None]
    monkeypatch.setattr(segment.training, "predict_probabilities", lambda net, image, target, **kwargs: probs)
    cfg = _tiny_config(target="binary", threshold="auto")
    model = train(pairs, cfg, tmp_path, steps=2, rng=np.random.default_rng(1))
    meta = nets.load(model)[1]
    assert meta["threshold"] == 0.15
    assert segment.foreground_threshold(cfg, meta) == 0.15  # what inference then uses
    assert segment.foreground_threshold(cfg) == 0.5  # no model: the plain default
    assert segment.foreground_threshold(_tiny_config(target="binary", threshold=0.3), meta) == 0.3  # configured wins


def test_segment_micrographs_writes_probabilities_that_evaluate_reads(tmp_path):
    import tifffile

    from nanoseg.evaluate import evaluate_folder
    from nanoseg.io import Micrograph
    from nanoseg.metrics import youden_index

    pairs, inst, image = _noisy_disc_pairs()
    cfg = _tiny_config()
    model = train(pairs, cfg, tmp_path / "model", steps=4, rng=np.random.default_rng(1))
    mg = Micrograph(image=pairs[0].image, pixel_size_nm=2.0, info_bar_rows=0, path=tmp_path / "x.tif",
                    full_shape=image.shape)
    segment_micrographs(model, [mg], tmp_path / "seg", probabilities=True)
    prob = tifffile.imread(tmp_path / "seg" / "probabilities" / "x.tif")
    labels = tifffile.imread(tmp_path / "seg" / "labels" / "x.tif")
    assert prob.dtype == np.float32 and prob.shape == labels.shape == image.shape
    # Label images are OME-TIFF with their physical pixel size (Fiji, napari, QuPath).
    from nanoseg.io import pixel_size_with_source

    assert pixel_size_with_source(tmp_path / "seg" / "labels" / "x.tif") == (2.0, "ome")
    assert 0.0 <= prob.min() < prob.max() <= 1.0
    (tmp_path / "gt").mkdir()
    tifffile.imwrite(tmp_path / "gt" / "x_m.tif", (inst > 0).astype(np.uint8) * 255)
    df = evaluate_folder(tmp_path / "seg" / "labels", tmp_path / "gt", "strict",
                         scores_dir=tmp_path / "seg" / "probabilities")
    row = df.iloc[0]
    assert row["n_pred"] == labels.max()  # the labels themselves are scored, not a re-thresholded map
    assert row["youden"] == pytest.approx(youden_index(prob.astype(float), inst > 0)[0])


@pytest.mark.parametrize("kind", ["three_class", "binary", "centres"])
def test_onnx_export_matches_torch(tmp_path, kind):
    import onnxruntime as ort

    torch.manual_seed(0)
    n_out = n_outputs(kind)
    net = nets.create("multiresunet", in_channels=1, out_channels=n_out, base_width=4, depth=2).eval()
    model = nets.save(net, tmp_path / "m.pt", meta={"target": kind}, kind="segmenter")
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 37, 53), (2, 1, 64, 40)]:
        x = torch.rand(shape)
        with torch.no_grad():
            logits = net(x)
            ref = probabilities_from_logits(logits, kind)
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape == tuple(ref.shape)
        np.testing.assert_allclose(out, ref.numpy(), atol=1e-4)


def test_load_pairs_reads_npz_and_image_mask_folders(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    inst = np.zeros((48, 64), np.uint16)
    inst[5:20, 5:20] = 1
    inst[5:20, 21:40] = 2
    image = rng.random(inst.shape).astype(np.float32)
    np.savez(tmp_path / "pair_0000.npz", image=image, instances=inst, binary=(inst > 0).astype(np.uint8))
    (pair,) = load_pairs(tmp_path)
    assert pair.instances.max() == 2 and pair.image.dtype == np.float32

    folder = tmp_path / "manual"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    tifffile.imwrite(folder / "images" / "x.tif", (image * 255).astype(np.uint8))
    tifffile.imwrite(folder / "masks" / "x_m.tif", ((inst > 0) * 255).astype(np.uint8))
    (pair,) = load_pairs(folder, info_bar_rows=0)
    assert pair.name == "x"
    assert pair.instances.max() == 2  # 4-connected components of the 0/255 mask
    assert pair.image.shape == inst.shape


def test_load_pairs_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(NanosegError, match="no training pairs"):
        load_pairs(tmp_path)


class _MorphologyNet(torch.nn.Module):
    """A 'network' with a known answer: bright pixels are particles, a band of ``band_px`` px
    (in its own pixels, like a trained net's receptive field) along their edge is the boundary."""

    def __init__(self, band_px: int = 3):
        super().__init__()
        self.band_px = band_px

    def forward(self, x):
        fg = torch.sigmoid(40 * (x - 0.5))
        k = 2 * self.band_px + 1
        interior = -torch.nn.functional.max_pool2d(-fg, k, stride=1, padding=self.band_px)
        probs = torch.cat([1 - fg, interior, fg - interior], dim=1).clamp_min(1e-6)
        return torch.log(probs)


def _disc_scene(scale: float) -> np.ndarray:
    """Bright discs (some touching) on a dark ground, drawn at ``scale`` x the model's pixel grid."""
    rng = np.random.default_rng(3)
    size = round(160 * scale)
    image = np.zeros((size, size), np.float32)
    for cy, cx in [(30, 30), (30, 52), (90, 40), (120, 120), (60, 110), (125, 70), (100, 95)]:
        r = rng.uniform(9, 13)
        rr, cc = disk((cy * scale, cx * scale), r * scale, shape=image.shape)
        image[rr, cc] = 1.0
    return image


def test_post_processing_runs_at_the_model_scale():
    """The same particles imaged at half, equal and twice the model's pixel density measure alike."""
    from nanoseg.particles import measure_particles

    cfg = build_config({"segment": {"target": "three_class", "band_giveback": "expand", "boundary_width_px": 3,
                                    "threshold": 0.5, "bf16": False, "marker_h": 0}}).segment
    meta = {"target": "three_class", "pixel_size_nm": 2.0}
    medians = {}
    for scale in (0.5, 1.0, 2.0):
        labels, probability = segment_image(_MorphologyNet(2), meta, _disc_scene(scale), cfg, pixel_size_nm=2.0 / scale)
        assert labels.shape == probability.shape == (round(160 * scale),) * 2
        particles = measure_particles(labels)
        assert len(particles) == 7
        medians[scale] = float(np.median(np.sqrt(4 * particles["area_px"] / np.pi))) * 2.0 / scale
    assert medians[0.5] == pytest.approx(medians[1.0], rel=0.02)
    assert medians[2.0] == pytest.approx(medians[1.0], rel=0.02)


def _many_discs(shape: tuple[int, int], n: int, radius: tuple[float, float]) -> np.ndarray:
    rng = np.random.default_rng(5)
    image = np.zeros(shape, np.float32)
    for _ in range(n):
        rr, cc = disk((rng.uniform(0, shape[0]), rng.uniform(0, shape[1])), rng.uniform(*radius), shape=shape)
        image[rr, cc] = 1.0
    return image


def test_large_image_segmented_block_by_block_as_in_one_piece(caplog):
    """Blocks (ragged at the right and bottom) with a margin give the particles of one whole-image pass."""
    meta = {"target": "three_class", "pixel_size_nm": None}
    image = _many_discs((700, 590), 160, (6, 14))
    whole_cfg = build_config({"segment": {"bf16": False, "marker_h": 0, "block_px": 1024}}).segment
    block_cfg = whole_cfg.model_copy(update={"block_px": 256 + 80, "block_margin_px": 40})
    whole, p_whole = segment_image(_MorphologyNet(2), meta, image, whole_cfg)
    with caplog.at_level("WARNING", logger="nanoseg"):
        blocks, p_blocks = segment_image(_MorphologyNet(2), meta, image, block_cfg)
    assert "block margin" not in caplog.text
    assert whole.max() > 100 and blocks.max() == whole.max()
    np.testing.assert_array_equal(blocks > 0, whole > 0)
    # The same partition of the foreground: each particle of one is exactly one particle of the other.
    fg = whole > 0
    assert len(np.unique(np.stack([whole[fg], blocks[fg]]), axis=1)[0]) == whole.max()
    np.testing.assert_allclose(p_blocks, p_whole, atol=1e-6)


def test_particle_larger_than_the_block_margin_is_reported(caplog):
    meta = {"target": "three_class", "pixel_size_nm": None}
    image = np.zeros((600, 300), np.float32)
    image[200:330, 100:200] = 1.0  # 130 px tall, across the core edge at 256, margin 20
    cfg = build_config({"segment": {"bf16": False, "marker_h": 0, "block_px": 296, "block_margin_px": 20}}).segment
    with caplog.at_level("WARNING", logger="nanoseg"):
        segment_image(_MorphologyNet(2), meta, image, cfg)
    assert "block margin" in caplog.text and "segment.block_margin_px" in caplog.text
    assert segment_image(_MorphologyNet(2), meta, image, cfg, probability=False)[1] is None
    with pytest.raises(ValueError, match="leaves no core"):
        cfg.model_copy(update={"block_margin_px": 148}).model_validate(cfg.model_dump() | {"block_margin_px": 148})


def test_checkpoint_of_other_data_is_not_resumed(tmp_path, caplog):
    pairs, inst, image = _noisy_disc_pairs()
    cfg = _tiny_config()
    train(pairs, cfg, tmp_path, steps=4, rng=np.random.default_rng(1))
    other = [Pair(1.0 - p.image, p.instances, p.name) for p in pairs]
    with caplog.at_level("WARNING", logger="nanoseg"):
        train(other, cfg, tmp_path, steps=8, rng=np.random.default_rng(1))
    assert "trained on other pairs or settings; starting fresh" in caplog.text
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["step"] for h in history] == [4, 8]  # a fresh run: validations at 4 and 8 of its own
    assert history[0]["seconds"] <= history[1]["seconds"]
    caplog.clear()
    with caplog.at_level("INFO", logger="nanoseg"):
        train(other, cfg, tmp_path, steps=12, rng=np.random.default_rng(1))
    assert "resuming segmentation training at step 8/12" in caplog.text
    # Post-processing and TTA are not what the net learns: changing them resumes the finished run.
    caplog.clear()
    applied_otherwise = cfg.model_copy(update={"tta": True, "marker_threshold": 0.6, "min_size_px": 3})
    with caplog.at_level("INFO", logger="nanoseg"):
        train(other, applied_otherwise, tmp_path, steps=12, rng=np.random.default_rng(1))
    assert "resuming segmentation training at step 12/12" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="nanoseg"):
        train(other, cfg.model_copy(update={"learning_rate": cfg.learning_rate / 2}), tmp_path, steps=12,
              rng=np.random.default_rng(1))
    assert "starting fresh" in caplog.text


def test_test_time_augmentation_makes_the_output_orientation_free():
    torch.manual_seed(0)
    net = nets.create("unet", in_channels=1, out_channels=3, base_width=4, depth=2).eval()
    image = np.random.default_rng(0).random((48, 64)).astype(np.float32)
    plain = predict_probabilities(net, image, "three_class", bf16=False)
    flipped_plain = predict_probabilities(net, image[:, ::-1].copy(), "three_class", bf16=False)
    # An untrained net is not equivariant: flipping the input changes the output beyond flipping it.
    assert np.abs(flipped_plain[:, :, ::-1] - plain).max() > 1e-3
    with_tta = predict_probabilities(net, image, "three_class", bf16=False, tta=True)
    for view, undo in [(image[:, ::-1], lambda p: p[:, :, ::-1]), (np.rot90(image), lambda p: np.rot90(p, -1, axes=(1, 2)))]:
        out = predict_probabilities(net, np.ascontiguousarray(view), "three_class", bf16=False, tta=True)
        np.testing.assert_allclose(undo(out), with_tta, atol=1e-5)
    np.testing.assert_allclose(with_tta.sum(axis=0), 1.0, atol=1e-5)


def test_agreement_comes_with_the_tta_probabilities():
    from nanoseg.segment import predict_with_agreement

    torch.manual_seed(0)
    net = nets.create("unet", in_channels=1, out_channels=3, base_width=4, depth=2).eval()
    image = np.random.default_rng(1).random((40, 72)).astype(np.float32)
    for tile_px in (1024, 32):  # whole and tiled
        probs, agreement = predict_with_agreement(net, image, "three_class", bf16=False, tile_px=tile_px,
                                                  overlap_px=8)
        expected = predict_probabilities(net, image, "three_class", bf16=False, tta=True, tile_px=tile_px,
                                         overlap_px=8)
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        assert agreement.shape == image.shape
        assert agreement.min() >= 3 / 8 - 1e-6 and agreement.max() <= 1 + 1e-6

    class Directional(torch.nn.Module):
        """Calls a pixel 'interior' where the image rises to the right, 'boundary' where it falls:
        an answer that turns with the image, so the 8 views split evenly between the two."""

        def __init__(self):
            super().__init__()
            self.grad = torch.nn.Conv2d(1, 1, (1, 3), padding=(0, 1), bias=False)
            self.grad.weight.data[:] = torch.tensor([[[[-10.0, 0.0, 10.0]]]])

        def forward(self, x):
            g = self.grad(x)
            return torch.cat([torch.zeros_like(g), g, -g], dim=1)

    ramp = np.tile(np.linspace(0, 1, 48, dtype=np.float32), (32, 1))
    _, agreement = predict_with_agreement(Directional(), ramp, "three_class", bf16=False)
    # along a horizontal ramp, 2 views see it rise, 2 fall, 4 see no slope (background): share 1/2
    np.testing.assert_allclose(agreement[4:-4, 4:-4], 0.5, atol=1e-6)
    _, agreement = predict_with_agreement(Directional(), np.full((32, 32), 0.5, np.float32), "three_class",
                                          bf16=False)
    np.testing.assert_allclose(agreement[2:-2, 2:-2], 1.0)  # no slope inside: every view says background


def test_onnx_export_segments_like_the_torch_model(tmp_path, cli, four_squares):
    """The exported file carries the model's meta: segment predict gives the same labels from either."""
    pytest.importorskip("onnxruntime")
    import tifffile

    from nanoseg.segment import load_segmenter

    torch.manual_seed(0)
    img, inst = four_squares
    seg = build_config({"segment": {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 32,
                                    "batch_size": 2, "steps": 20, "val_every": 10, "bf16": False}},
                       profile="demo").segment
    model = train([Pair(img, inst, "a"), Pair(img, inst, "b")], seg, tmp_path / "seg", rng=np.random.default_rng(0),
                  pixel_size_nm=2.0)
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    _, meta = load_segmenter(onnx_path)
    assert meta["target"] == nets.load(model)[1]["target"] and meta["pixel_size_nm"] == 2.0
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "x.tif", (img * 255).astype(np.uint8))
    for name, path in (("pt", model), ("onnx", onnx_path)):
        res = cli("segment", "predict", tmp_path / "images", "--model", path, "--out", tmp_path / name,
                  "--pixel-size", "2", "--set", "data.info_bar_rows=0", "--set", "segment.bf16=false")
        assert res.code == 0, res.output
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "pt" / "labels" / "x.tif"),
                                  tifffile.imread(tmp_path / "onnx" / "labels" / "x.tif"))
    bare = tmp_path / "bare.onnx"
    import onnx

    graph = onnx.load(str(onnx_path))
    del graph.metadata_props[:]
    onnx.save(graph, str(bare))
    with pytest.raises(NanosegError, match="no nanoseg metadata"):
        load_segmenter(bare)
