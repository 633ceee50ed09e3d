"""Model files and label images given in the wrong place: each model file says what it is, and
a label folder that holds binary masks or micrographs is refused rather than measured."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from test_bad_input import Case, check_case, measure

from nanoseg import nets
from nanoseg.io import label_image_doubt, write_tiff

pytestmark = pytest.mark.usefixtures("keep_global_rng")

SEGMENTER_META = {"target": "three_class", "pixel_size_nm": 2.0, "threshold": 0.5}


def segmenter_file(path: Path, *, kind: bool = True, **kwargs) -> Path:
    """An untrained segmentation net saved as nanoseg saves one (``kind=False``: as before files had a kind)."""
    net = nets.create("unet", **{"in_channels": 1, "out_channels": 3, "base_width": 4, "depth": 2, **kwargs})
    nets.save(net, path, meta=SEGMENTER_META, kind="segmenter")
    return path if kind else without_kind(path)


def classifier_file(path: Path, *, kind: bool = True) -> Path:
    """An untrained keep/discard net saved as ``nanoseg classify train`` saves one."""
    from nanoseg.classify.network import make_classifier

    net = make_classifier(SimpleNamespace(base_width=4, depth=2))
    nets.save(net, path, meta={"task": "classify", "score_threshold": 0.5}, kind="classifier")
    return path if kind else without_kind(path)


def without_kind(path: Path) -> Path:
    """Rewrite a model file as nanoseg wrote it before the meta recorded the kind."""
    import torch

    payload = torch.load(path, weights_only=True)
    del payload["meta"]["kind"]
    torch.save(payload, path)
    return path


def edited_state(path: Path, edit) -> Path:
    import torch

    payload = torch.load(path, weights_only=True)
    edit(payload["state_dict"])
    torch.save(payload, path)
    return path


def drop_first_key(state: dict) -> None:
    del state[next(iter(state))]


def model_case(make, command):
    """A setup that writes a model file with ``make(path)`` and runs ``command(root, path)``."""
    def setup(root, _):
        return command(root, make(root / "m.pt"))
    return setup


def measure_with_model(root, model):
    return ["measure", root / "images", "--model", model, "--out", root / "out"]


def predict_with_model(root, model):
    return ["segment", "predict", root / "images", "--model", model, "--out", root / "seg"]


def classify_predict(root, *extra):
    return ["classify", "predict", root / "images" / "b.tif", "--labels", root / "labels", "--out", root / "d.csv",
            "--set", "data.info_bar_rows=0", *extra]


def labels_b(content):
    """A setup that replaces labels/b.tif by ``content(root)``; measure then leaves b out."""
    def setup(root, _):
        write_tiff(root / "labels" / "b.tif", content(root))
        return measure(root, root / "images")
    return setup


def mask_255(root):
    return np.where(tifffile.imread(root / "labels" / "b.tif") > 0, 255, 0).astype(np.uint8)


def micrograph_b(root):
    return tifffile.imread(root / "images" / "b.tif")


def anti_aliased_b(root):
    from scipy import ndimage as ndi

    return np.round(ndi.gaussian_filter(mask_255(root).astype(float), 1.0)).astype(np.uint8)


def classify_labels_b(content):
    def setup(root, _):
        write_tiff(root / "labels" / "b.tif", content(root))
        return classify_predict(root)
    return setup


IS_CLASSIFIER = ("{root}/m.pt is a nanoseg classifier, not a segmentation model", "give it as --classifier")
IS_SEGMENTER = ("{root}/m.pt is a nanoseg segmentation model, not a classifier", "give it as --model")
UNFIT = ("{root}/m.pt: weights do not fit the network its settings describe", "from another nanoseg version",
         "retrain or re-export")

MY_CASES = [
    Case("measure-model-is-classifier", model_case(classifier_file, measure_with_model), 2, IS_CLASSIFIER),
    Case("measure-model-is-old-classifier", model_case(lambda p: classifier_file(p, kind=False), measure_with_model),
         2, IS_CLASSIFIER),
    Case("predict-model-is-classifier", model_case(classifier_file, predict_with_model), 2, IS_CLASSIFIER),
    Case("export-model-is-classifier", model_case(classifier_file, lambda root, model: [
         "segment", "export", model, "--onnx", root / "m.onnx"]), 2, IS_CLASSIFIER),
    Case("measure-classifier-is-segmenter", model_case(segmenter_file, lambda root, model: measure(
         root, root / "images", extra=("--classifier", model))), 2, IS_SEGMENTER),
    Case("measure-classifier-is-old-segmenter", model_case(lambda p: segmenter_file(p, kind=False), lambda root, model:
         measure(root, root / "images", extra=("--classifier", model))), 2, IS_SEGMENTER),
    Case("classify-predict-classifier-is-segmenter", model_case(segmenter_file, lambda root, model: classify_predict(
         root, "--classifier", model)), 2, IS_SEGMENTER),
    Case("model-missing-keys", model_case(lambda p: edited_state(segmenter_file(p), drop_first_key),
                                          measure_with_model), 2, (*UNFIT, "1 missing")),
    Case("model-unexpected-keys", model_case(lambda p: edited_state(segmenter_file(p), lambda s: s.update(
         extra=s[next(iter(s))])), predict_with_model), 2, (*UNFIT, "1 unexpected (e.g. extra)")),
    Case("model-weights-of-other-shape", model_case(lambda p: edited_state(segmenter_file(p), lambda s: s.update(
         {k: v[:1] for k, v in s.items() if v.ndim == 4})), measure_with_model), 2, (*UNFIT, "of another shape")),
    Case("classifier-missing-keys", model_case(lambda p: edited_state(classifier_file(p), drop_first_key),
                                               lambda root, model: measure(root, root / "images", extra=(
                                                   "--classifier", model))), 2, (*UNFIT, "1 missing")),
    Case("measure-labels-binary-mask", labels_b(mask_255), 1,
         ("{root}/images/b.tif", "{root}/labels/b.tif: looks like a binary mask (one value in 3 separate particles)",
          "not a label image", "nanoseg segment predict", "skimage.measure.label")),
    Case("measure-labels-micrograph", labels_b(micrograph_b), 1,
         ("{root}/images/b.tif", "{root}/labels/b.tif: looks like a micrograph", "not a label image",
          "not the micrographs' folder")),
    Case("measure-labels-anti-aliased-mask", labels_b(anti_aliased_b), 1,
         ("{root}/images/b.tif", "{root}/labels/b.tif: looks like an anti-aliased binary mask")),
    Case("classify-predict-labels-binary-mask", classify_labels_b(mask_255), 2,
         ("{root}/labels/b.tif: looks like a binary mask", "nanoseg segment predict")),
    Case("classify-predict-labels-micrograph", classify_labels_b(micrograph_b), 2,
         ("{root}/labels/b.tif: looks like a micrograph", "not a label image")),
]


@pytest.mark.parametrize("case", MY_CASES, ids=lambda c: c.id)
def test_models_bad_input(case, batch, cli, monkeypatch):
    check_case(case, batch, cli, monkeypatch)


# --------------------------------------------------------------------------- what still works


def test_saved_files_say_their_kind(model, tmp_path):
    assert nets.load_meta(model)["kind"] == "segmenter"
    assert nets.load_meta(classifier_file(tmp_path / "c.pt"))["kind"] == "classifier"


@pytest.mark.parametrize(("meta", "kind"), [
    ({"target": "binary"}, "segmenter"), ({"task": "classify"}, "classifier"),
    ({"input": "binary mask", "output": "micrograph"}, "translator"), ({"n_outlines": 40}, "shape-generator"),
    ({"pixel_size_nm": 2.0}, None)])
def test_files_without_a_kind_are_recognised_by_their_meta(meta, kind):
    assert nets.kind_of(meta) == kind


def test_old_files_without_a_kind_still_measure(model, batch, cli, tmp_path):
    # A segmenter and a classifier saved before the kind was recorded give what they gave then.
    import shutil

    old = without_kind(Path(shutil.copy(model, tmp_path / "old.pt")))
    cls = classifier_file(tmp_path / "c.pt")
    old_cls = without_kind(Path(shutil.copy(cls, tmp_path / "old_c.pt")))
    runs = {}
    for name, seg, classifier in [("new", model, cls), ("old", old, old_cls)]:
        res = cli("measure", batch / "images", "--model", seg, "--classifier", classifier, "--out", tmp_path / name,
                  "--set", "data.info_bar_rows=0")
        assert res.code == 0, res.output
        runs[name] = tifffile.imread(tmp_path / name / "segment" / "labels" / "a.tif"), (
            tmp_path / name / "particles.csv").read_text()
    assert np.array_equal(runs["new"][0], runs["old"][0]) and runs["new"][1] == runs["old"][1]
    assert runs["new"][0].max() > 0


def test_onnx_export_carries_the_kind(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from nanoseg.segment import export_onnx, load_segmenter

    _, meta = load_segmenter(export_onnx(model, tmp_path / "m.onnx"))
    assert meta["kind"] == "segmenter" and meta["target"] == nets.load_meta(model)["target"]


def test_label_images_nanoseg_writes_are_not_doubted(batch, disc_micrograph):
    labels = tifffile.imread(batch / "labels" / "c.tif")
    assert label_image_doubt(labels) is None
    assert label_image_doubt(labels > 0) == "a binary mask (one value in 4 separate particles)"
    assert label_image_doubt(np.zeros((8, 8), np.uint16)) is None  # no particles
    one = np.zeros((20, 20), np.uint8)
    one[2:5, 2:18], one[8:10, 2:18] = 1, 1  # one particle cut in two by resampling: still labels
    assert label_image_doubt(one) is None
    image, _ = disc_micrograph(0)
    assert label_image_doubt(image).startswith("a micrograph")


def test_labels_measured_as_given_with_ids_above_255(batch, cli):
    # 16-bit labels with few particles (and ids past 8 bits) are labels, not a micrograph.
    labels = tifffile.imread(batch / "labels" / "a.tif").astype(np.uint16)
    write_tiff(batch / "labels" / "a.tif", np.where(labels > 0, labels + 1000, 0).astype(np.uint16))
    res = cli(*measure(batch, batch / "images" / "a.tif"))
    assert res.code == 0, res.output
    import pandas as pd

    table = pd.read_csv(batch / "out" / "particles.csv")
    assert sorted(table["label"]) == [1001, 1002]


@pytest.mark.parametrize("trained_at, warned", [(7.34, True), (2.05, False), (None, False)])
def test_a_classifier_from_another_magnification_is_named(batch, cli, tmp_path, trained_at, warned):
    """A classifier trained at 7.34 nm judging 2 nm particles: accepted before without a word."""
    from nanoseg.classify.network import make_classifier

    path = tmp_path / "c.pt"
    nets.save(make_classifier(SimpleNamespace(base_width=4, depth=2)), path,
              meta={"task": "classify", "score_threshold": 0.5, "pixel_size_nm": trained_at}, kind="classifier")
    res = cli("measure", batch / "images", "--labels", batch / "labels", "--out", batch / "out", "--classifier", path,
              "--set", "data.info_bar_rows=0")
    assert res.code == 0, res.output
    warnings = json.loads((batch / "out" / "summary.json").read_text())["warnings"]
    named = [w for w in warnings if "was trained at 7.34 nm per pixel but judges particles at 2 nm" in w]
    assert bool(named) == warned, warnings
