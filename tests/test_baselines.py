"""TSEM-derived training masks (baseline c): registration, threshold + watershed, training set."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from nanoseg.errors import NanosegError
from nanoseg.evaluate import baselines
from nanoseg.metrics import image_iou


def _disks(shape: tuple[int, int], centres: list[tuple[int, int]], radius_px: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, bool)
    for cy, cx in centres:
        out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2
    return out


def _synthetic_sem(shape=(256, 320), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A SEM-like image (bright particles, noise) and its particle mask."""
    rng = np.random.default_rng(seed)
    centres = [(int(y), int(x)) for y, x in rng.uniform(20, np.array(shape) - 20, size=(40, 2))]
    mask = _disks(shape, centres, 9)
    image = 0.2 + 0.6 * ndi.gaussian_filter(mask.astype(float), 1.5) + rng.normal(0, 0.03, shape)
    return np.clip(image, 0, 1).astype(np.float32), mask


def test_register_recovers_integer_shift_exactly():
    sem, _ = _synthetic_sem()
    true_shift = (-7, 12)
    # TSEM = inverted SEM moved by -true_shift; registering moves it back by true_shift.
    tsem = 1.0 - ndi.shift(sem, (-true_shift[0], -true_shift[1]), order=0, mode="constant", cval=float(sem.min()))
    shift, aligned = baselines.register_tsem(tsem, sem)[:2]
    assert tuple(shift) == true_shift
    inner = (slice(20, -20), slice(20, -20))
    np.testing.assert_allclose(aligned[inner], 1.0 - sem[inner], atol=1e-6)


def test_register_real_image_shifted_copy(shared_data):
    from nanoseg.io import read_micrograph

    sem = read_micrograph(shared_data / "sem" / "1908248.tif").image[:384, :512]
    tsem = 1.0 - ndi.shift(sem, (5, -9), order=0, mode="nearest")
    shift = baselines.register_tsem(tsem, sem).shift
    assert tuple(shift) == (-5, 9)


def test_rotation_and_scale_are_detected_and_corrected():
    sem, mask = _synthetic_sem((384, 384), seed=1)
    tsem = baselines.rotate_scale(1.0 - sem, 2.0, 1.03, fill=float(1 - sem.min()))
    angle_deg, scale = baselines.estimate_rotation_scale(1.0 - tsem, sem)
    assert angle_deg == pytest.approx(2.0, abs=0.3)
    assert scale == pytest.approx(1.03, abs=0.01)
    aligned = baselines.register_tsem(tsem, sem).aligned
    assert image_iou(baselines.tsem_binary(aligned), mask) > 0.9
    # Without the correction the outer particles stay off.
    plain = baselines.register_tsem(tsem, sem, correct_rotation_scale=False).aligned
    assert image_iou(baselines.tsem_binary(plain), mask) < 0.8


def test_the_sem_mask_moves_onto_the_tsem_image_by_the_inverse_registration():
    sem, mask = _synthetic_sem((384, 384), seed=1)
    tsem = ndi.shift(baselines.rotate_scale(1.0 - sem, 2.0, 1.03, fill=float(1 - sem.min())), (4, -6), order=1,
                     mode="nearest")
    registration = baselines.register_tsem(tsem, sem)
    assert registration.angle_deg == pytest.approx(2.0, abs=0.3) and registration.scale == pytest.approx(1.03, abs=0.01)
    on_tsem = registration.onto_tsem(mask)
    assert on_tsem.dtype == mask.dtype and on_tsem.shape == mask.shape
    particles = baselines.tsem_binary(tsem)
    assert image_iou(particles, on_tsem) > 0.9 > image_iou(particles, mask) + 0.2


def test_unrotated_pair_is_left_alone():
    sem, _ = _synthetic_sem((256, 256), seed=2)
    tsem = 1.0 - ndi.shift(sem, (3, 4), order=0, mode="nearest")
    angle_deg, scale = baselines.estimate_rotation_scale(1.0 - tsem, sem)
    assert abs(angle_deg) <= baselines.ROTATION_TOLERANCE_DEG
    assert abs(scale - 1) <= baselines.SCALE_TOLERANCE


def test_register_rejects_shape_mismatch():
    with pytest.raises(NanosegError, match="equal shape"):
        baselines.register_tsem(np.zeros((64, 64)), np.zeros((64, 80)))


def test_real_pair_alignment_raises_iou_with_manual_mask(shared_data):
    from nanoseg.io import read_mask, read_micrograph

    sem = read_micrograph(shared_data / "sem" / "1908248.tif")
    tsem = read_micrograph(shared_data / "tsem" / "1908249.tif")
    manual = read_mask(shared_data / "masks" / "1908248_m.tif")[: sem.image.shape[0]]
    shift, aligned = baselines.register_tsem(tsem.image, sem.image)[:2]
    before = image_iou(baselines.tsem_binary(tsem.image), manual)
    after = image_iou(baselines.tsem_binary(aligned), manual)
    print(f"1908248: shift {shift} px, IoU vs manual mask {before:.3f} unaligned -> {after:.3f} aligned")
    assert np.hypot(*shift) > 5  # the pair really is misaligned
    assert after > 0.8
    assert after > before + 0.2


def test_labels_are_4_connected_consistent_and_split_touching_particles():
    shape = (128, 160)
    # Two touching pairs of disks and one lone disk, dark on bright.
    mask = _disks(shape, [(40, 40), (40, 58), (90, 100), (104, 112), (30, 130)], 10)
    tsem = np.where(mask, 0.15, 0.85).astype(np.float32)
    labels = baselines.tsem_to_labels(tsem)
    assert labels.max() == 5
    from skimage.measure import label

    for connectivity in (1, 2):
        relabelled = label(labels > 0, connectivity=connectivity)
        assert relabelled.max() == labels.max()
        # Same partition: each label maps to exactly one component and vice versa.
        pairs = np.unique(np.stack([labels[labels > 0], relabelled[labels > 0]]), axis=1)
        assert pairs.shape[1] == labels.max()
    # The particles are the mask, less the separation lines.
    assert np.count_nonzero(mask & (labels == 0)) < 0.03 * mask.sum()
    assert not np.any((labels > 0) & ~mask)


def test_threshold_method_is_checked():
    with pytest.raises(NanosegError, match="otsu"):
        baselines.tsem_binary(np.zeros((32, 32)), method="mean")


def _write_synthetic_dataset(root, image_id="100", shift=(4, -6)):
    sem, mask = _synthetic_sem((256, 320), seed=3)
    tsem = 1.0 - ndi.shift(sem, (-shift[0], -shift[1]), order=0, mode="nearest")
    for folder in ("sem", "tsem", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / "sem" / f"{image_id}.tif", np.round(sem * 255).astype(np.uint8))
    tifffile.imwrite(root / "tsem" / f"{int(image_id) + 1}.tif", np.round(tsem * 255).astype(np.uint8))
    tifffile.imwrite(root / "masks" / f"{image_id}_m.tif", (mask * 255).astype(np.uint8))
    return mask


def test_training_set_on_synthetic_data_via_cli(tmp_path):
    from typer.testing import CliRunner

    from nanoseg.cli import app
    from nanoseg.segment import load_pairs

    data = tmp_path / "data"
    mask = _write_synthetic_dataset(data)
    out = tmp_path / "pairs"
    result = CliRunner().invoke(app, ["baseline", "tsem-masks", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "100: shift (+4.0, -6.0) px" in result.output
    pairs = load_pairs(out)
    assert [p.name for p in pairs] == ["100"]
    assert image_iou(pairs[0].instances > 0, mask) > 0.85
    assert pairs[0].instances.max() >= 20


def test_cli_missing_tsem_is_one_line_error(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "data"
    _write_synthetic_dataset(data)
    (data / "tsem" / "101.tif").unlink()
    result = subprocess.run([sys.executable, "-c", "from nanoseg.cli import main; main()", "baseline", "tsem-masks",
                             str(data), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "101.tif" in lines[-1]
    assert "Traceback" not in result.stderr and sum(line.startswith("error: ") for line in lines) == 1


def test_end_to_end_one_real_image(shared_data, tmp_path):
    import pandas as pd

    from nanoseg.segment import load_pairs

    records = baselines.make_tsem_training_set(shared_data, ["1908250"], tmp_path)
    rec = records[0]
    print(f"1908250: shift ({rec.shift_rows_px}, {rec.shift_cols_px}) px, {rec.n_particles} particles, "
          f"IoU vs manual {rec.iou_unaligned} -> {rec.iou_aligned}, residual shift {rec.residual_shift_px} px")
    assert rec.iou_aligned > rec.iou_unaligned + 0.2
    assert rec.residual_shift_px < 1.5
    written = tifffile.imread(tmp_path / "masks" / "1908250_m.tif")
    assert written.shape == (768, 1024) and set(np.unique(written)) <= {0, 255}
    assert not written[712:].any()  # the info bar holds no particles
    pairs = load_pairs(tmp_path)
    assert len(pairs) == 1 and pairs[0].image.shape == (712, 1024)
    assert pairs[0].instances.max() == rec.n_particles
    table = pd.read_csv(tmp_path / "registration.csv")
    assert list(table["id"].astype(str)) == ["1908250"]
