"""The napari plugin: manifest, reader, writer and both widgets in a real (virtual-display) viewer.

napari draws with OpenGL, which Qt's 'offscreen' platform does not provide, so the
viewer tests run on a virtual X display (pytest-xvfb starts one; `.ci/run` installs Xvfb). The
whole module is skipped where the ``napari`` extra is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from nanoseg.napari_plugin import core  # noqa: E402
from nanoseg.napari_plugin._reader import get_reader  # noqa: E402
from nanoseg.napari_plugin._writer import write_labels  # noqa: E402

IMAGE_ID = "1908248"


def _qt_window_reason() -> str | None:
    """Why Qt cannot open a window here, or None when it can.

    Asked in a child process: without a display Qt aborts the whole process (pytest-qt's
    session-wide QApplication would take the test worker down), so no test may try it in here.
    pytest-xvfb has set DISPLAY by the time this module is collected, where Xvfb is installed.
    """
    if not os.environ.get("DISPLAY"):
        return "no X display for napari's viewer: install Xvfb (Debian package xvfb); pytest-xvfb starts it"
    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "Qt did not start a QApplication within 60 s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"Qt cannot open a window on DISPLAY={os.environ['DISPLAY']}: {last}"
    return None


_NO_WINDOW = _qt_window_reason()
# A marker, not a fixture: pytest-qt's session-scoped QApplication is made before any
# function-scoped fixture could skip.
needs_display = pytest.mark.skipif(_NO_WINDOW is not None, reason=_NO_WINDOW or "")


def test_manifest_is_found_with_every_contribution():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("nanoseg")
    contributions = manifest.contributions
    assert [r.command for r in contributions.readers] == ["nanoseg.read_micrograph"]
    assert [w.command for w in contributions.writers] == ["nanoseg.write_labels"]
    assert {w.display_name for w in contributions.widgets} == {"Segment and measure", "Measure labels"}
    for command in contributions.commands:  # every python_name resolves
        module, name = command.python_name.split(":")
        assert callable(getattr(__import__(module, fromlist=[name]), name))


def test_reader_sets_the_scale_and_hides_the_info_bar(shared_data):
    import tifffile

    path = shared_data / "sem" / f"{IMAGE_ID}.tif"
    reader = get_reader(str(path))
    assert reader is not None and get_reader(str(path.with_suffix(".png"))) is None
    [(data, kwargs, kind)] = reader(str(path))
    rows_in_file = tifffile.imread(path).shape[0]
    cropped = kwargs["metadata"]["nanoseg"]["info_bar_rows"]
    assert kind == "image" and cropped > 0 and data.shape == (rows_in_file - cropped, 1024)  # info bar hidden
    assert kwargs["scale"] == pytest.approx((7.34, 7.34), rel=1e-3) and kwargs["units"] == ("nm", "nm")
    assert kwargs["metadata"]["nanoseg"]["pixel_size_source"] != "none"


def test_writer_keeps_the_pixel_size(tmp_path):
    import tifffile

    from nanoseg.io import read_labels, read_micrograph

    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 5:20], labels[20:35, 30:50] = 1, 70000  # beyond uint16
    [written] = write_labels(str(tmp_path / "edited"), labels, {"scale": (3.5, 3.5), "units": ("nm", "nm")})
    assert written.endswith("edited.tif")
    with tifffile.TiffFile(written) as tif:
        assert tif.is_ome and 'PhysicalSizeX="3.5"' in tif.ome_metadata and 'PhysicalSizeXUnit="nm"' in tif.ome_metadata
    np.testing.assert_array_equal(read_labels(written), labels)
    assert read_micrograph(written, info_bar_rows=0).pixel_size_nm == pytest.approx(3.5)
    # napari's side: the plugin's reader opens the written labels at the same scale
    [(_, kwargs, _)] = get_reader(written)(written)
    assert kwargs["scale"] == pytest.approx((3.5, 3.5))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, shared_data):
    """A tiny segmentation net trained briefly on two crops of one shared micrograph and its manual mask."""
    from nanoseg.config import build_config
    from nanoseg.io import read_mask, read_micrograph
    from nanoseg.labels import label_binary
    from nanoseg.runtime import seed_everything
    from nanoseg.segment import Pair, train

    seed_everything(0)
    mg = read_micrograph(shared_data / "sem" / "1908250.tif")
    mask = read_mask(shared_data / "masks" / "1908250_m.tif")[: mg.image.shape[0]]
    pairs = [Pair(mg.image[r:r + 192, c:c + 192], label_binary(mask[r:r + 192, c:c + 192] > 0, 1).astype(np.int32),
                  f"p{r}") for r, c in ((100, 100), (300, 500))]
    cfg = build_config({"segment": {"architecture": "unet", "base_width": 4, "depth": 2, "tile_size_px": 96,
                                    "batch_size": 2, "val_every": 20, "bf16": False}}).segment
    return train(pairs, cfg, tmp_path_factory.mktemp("model"), steps=120, rng=np.random.default_rng(0),
                 pixel_size_nm=mg.pixel_size_nm)


@needs_display
def test_segment_edit_remeasure_and_compare_with_the_cli(make_napari_viewer, qtbot, shared_data,
                                                         tiny_model, tmp_path, cli):
    from nanoseg.io import write_tiff
    from nanoseg.napari_plugin._widget import MeasureLabels, SegmentAndMeasure

    viewer = make_napari_viewer()
    path = shared_data / "sem" / f"{IMAGE_ID}.tif"
    [image] = viewer.open(str(path), plugin="nanoseg")
    assert tuple(image.scale) == pytest.approx((7.34, 7.34), rel=1e-3) and image.data.shape[1] == 1024

    # Segment and measure, in a worker thread
    seg = SegmentAndMeasure(viewer)
    viewer.window.add_dock_widget(seg)
    seg.image.value = image
    seg.model.value = tiny_model
    with qtbot.waitSignal(seg.start().finished, timeout=300_000):
        pass
    name = f"{IMAGE_ID} particles"
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=10_000)
    labels_layer = viewer.layers[name]
    n = int(len(np.unique(labels_layer.data)) - 1)
    assert n >= 5, seg.status.value
    assert tuple(labels_layer.scale) == pytest.approx(tuple(image.scale))
    features = labels_layer.features
    assert len(features) == n and {"min_feret_nm", "max_feret_nm", "ecd_nm", "area_nm2", "kept", "reason"} <= set(features)
    assert seg.progress.value == len(core.STEPS) and seg.status.value.startswith(f"{name}: kept ")
    kept_label = int(features.loc[features["kept"], "label"].iloc[0])
    assert tuple(labels_layer.colormap.map(kept_label))[:3] == pytest.approx((40 / 255, 200 / 255, 80 / 255))
    assert seg.table.shape[0] == n and "min_feret_nm" in seg.table.column_headers
    assert len(seg.axis.patches) > 0  # the histogram has bars

    # the user deletes one particle and merges two others, then re-measures
    edited = labels_layer.data.copy()
    ids = features["label"].astype(int).to_numpy()
    edited[edited == ids[0]] = 0
    edited[edited == ids[2]] = ids[1]
    labels_layer.data = edited
    remeasure = MeasureLabels(viewer)
    viewer.window.add_dock_widget(remeasure)
    remeasure.labels.value = labels_layer
    remeasure.image.value = image
    remeasure.out_dir.value = tmp_path / "widget"
    summary = remeasure.export()
    assert summary is not None, remeasure.status.value
    assert len(labels_layer.features) == n - 2 and ids[0] not in set(labels_layer.features["label"])

    # the command line on the same labels gives the same particles and summary
    write_tiff(tmp_path / "labels" / f"{IMAGE_ID}.tif", edited.astype(np.int32), ome=True)
    res = cli("measure", path, "--labels", tmp_path / "labels", "--out", tmp_path / "cli")
    assert res.code == 0, res.output
    ours = pd.read_csv(tmp_path / "widget" / "particles.csv")
    theirs = pd.read_csv(tmp_path / "cli" / "particles.csv")
    pd.testing.assert_frame_equal(ours, theirs)
    ours_summary = json.loads((tmp_path / "widget" / "summary.json").read_text())
    theirs_summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    for key in ("n_particles", "n_kept", "descriptors", "counting_rule", "pixel_size_source"):
        assert ours_summary.get(key) == theirs_summary.get(key), key

    # and the writer, chosen by napari for the labels layer
    saved = labels_layer.save(str(tmp_path / "saved.tif"), plugin="nanoseg")
    assert saved and get_reader(saved[0])(saved[0])[0][1]["scale"] == pytest.approx((7.34, 7.34), rel=1e-3)


@needs_display
def test_measure_labels_says_what_is_missing(make_napari_viewer):
    from nanoseg.napari_plugin._widget import MeasureLabels, SegmentAndMeasure

    viewer = make_napari_viewer()
    widget = MeasureLabels(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.measure() is None and widget.status.value == "pick a labels layer first"
    seg = SegmentAndMeasure(viewer)
    assert seg.start() is None and "pick a micrograph layer and a model file" in seg.status.value
    layer = viewer.add_labels(np.zeros((20, 30), np.int32))
    viewer.add_image(np.zeros((10, 10), np.float32))
    widget.reset_choices()
    widget.labels.value, widget.image.value = layer, viewer.layers[-1]
    assert widget.measure() is None and "pick the image the labels were drawn on" in widget.status.value
