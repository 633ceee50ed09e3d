"""Demo data: files, calibration, info bar, ground truth consistency, particle statistics."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.measure import label, regionprops

from nanoseg.demo import (
    DEMO_INFO_BAR_ROWS,
    DEMO_PARTICLES_PER_IMAGE,
    DEMO_PIXEL_SIZE_NM,
    make_demo_data,
    separate_instances,
)
from nanoseg.io import list_images, read_labels, read_mask, read_micrograph

N_IMAGES = 2


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_data(tmp_path_factory.mktemp("demo"), n_images=N_IMAGES, seed=0)


def test_files_exist(demo):
    images = list_images(demo / "images")
    assert [p.name for p in images] == [f"demo_{i:02d}.tif" for i in range(N_IMAGES)]
    assert len(list_images(demo / "outlines")) == 40
    for p in images:
        assert (demo / "masks" / f"{p.stem}_m.tif").is_file()
        assert (demo / "labels" / p.name).is_file()
    assert "synthetic" in (demo / "README.txt").read_text()
    assert not list(demo.rglob(".*"))  # no temporaries of the atomic writes


def test_images_calibrated_with_exact_info_bar(demo):
    for path in list_images(demo / "images"):
        raw = tifffile.imread(path)
        assert raw.dtype == np.uint8 and raw.shape == (768, 1024)
        mg = read_micrograph(path)
        assert mg.pixel_size_nm == pytest.approx(DEMO_PIXEL_SIZE_NM, rel=1e-6)
        assert mg.info_bar_rows == DEMO_INFO_BAR_ROWS
        assert mg.image.shape == (768 - DEMO_INFO_BAR_ROWS, 1024)


def test_ground_truth_is_consistent(demo):
    for path in list_images(demo / "images"):
        labels = read_labels(demo / "labels" / path.name)
        mask = read_mask(demo / "masks" / f"{path.stem}_m.tif")
        assert labels.shape == mask.shape == (768, 1024)
        assert not mask[-DEMO_INFO_BAR_ROWS:].any()
        relabelled = label(mask, connectivity=1)
        # Same partition: every instance is exactly one 4-connected component of the mask.
        assert relabelled.max() == labels.max() == len(np.unique(labels)) - 1
        pairs = np.unique(np.stack([labels[mask], relabelled[mask]]), axis=1)
        assert pairs.shape[1] == labels.max()
        np.testing.assert_array_equal(labels > 0, mask)


def test_particles_like_tio2(demo):
    for path in list_images(demo / "images"):
        labels = read_labels(demo / "labels" / path.name)
        n = int(labels.max())
        assert DEMO_PARTICLES_PER_IMAGE[0] - 10 <= n <= DEMO_PARTICLES_PER_IMAGE[1]
        props = regionprops(labels)
        ecd = np.median([p.equivalent_diameter_area for p in props])
        assert 17 <= ecd <= 32
        # Non-spherical, and agglomerated: many particles touch another one (1-px lines between).
        assert np.median([p.eccentricity for p in props]) > 0.35
        grown = ndi.grey_dilation(labels, size=3)
        touching = np.unique(labels[(grown != labels) & (labels > 0) & (grown > 0)])
        assert touching.size > 0.4 * n
        # Particles bright, substrate dark.
        image = read_micrograph(path).image
        fg = ndi.binary_erosion(labels[: image.shape[0]] > 0, iterations=2)
        bg = ~ndi.binary_dilation(labels[: image.shape[0]] > 0, iterations=5)
        assert np.median(image[fg]) > np.median(image[bg]) + 0.15


def test_outlines_like_user_drawings(demo):
    areas = []
    for path in list_images(demo / "outlines"):
        outline = tifffile.imread(path)
        assert outline.shape == (64, 64) and outline.dtype == np.uint8
        assert set(np.unique(outline)) == {0, 255}
        assert label(outline > 0).max() == 1
        cy, cx = ndi.center_of_mass(outline > 0)
        assert abs(cy - 31.5) < 3 and abs(cx - 31.5) < 3
        areas.append((outline > 0).sum())
    particle_area = np.median(np.bincount(read_labels(demo / "labels" / "demo_00.tif").ravel())[1:])
    assert particle_area < np.median(areas) < 2 * particle_area  # drawn a bit generously


def test_same_seed_same_data(tmp_path):
    a = make_demo_data(tmp_path / "a", n_images=1, seed=4, shape=(200, 256))
    b = make_demo_data(tmp_path / "b", n_images=1, seed=4, shape=(200, 256))
    c = make_demo_data(tmp_path / "c", n_images=1, seed=5, shape=(200, 256))
    image = tifffile.imread(a / "images" / "demo_00.tif")
    np.testing.assert_array_equal(image, tifffile.imread(b / "images" / "demo_00.tif"))
    assert not np.array_equal(image, tifffile.imread(c / "images" / "demo_00.tif"))
    assert read_micrograph(a / "images" / "demo_00.tif").info_bar_rows == DEMO_INFO_BAR_ROWS


def test_separate_instances_cuts_touching_particles():
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 2:12] = 1
    labels[5:15, 12:22] = 2  # touches 1 along a vertical line
    labels[0:2, 25:27] = 3  # too small to keep
    out = separate_instances(labels)
    assert out.max() == 2
    assert label(out > 0, connectivity=1).max() == 2
    assert (out[5:15, 12] == 0).all()  # the upper particle's side of the contact became background
