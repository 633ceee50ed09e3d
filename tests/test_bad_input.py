"""Bad input through the real command line, one table row a case.

Every row ends the way docs/usage.md ("Batches and bad files") promises: a command that can do nothing
exits 2 with one ``error:`` line naming the file or option and the fix, and leaves the folder
exactly as it was; a batch with some unusable micrographs exits 1, lists them and writes complete
outputs for the rest; input that is odd but usable (RGB, NaN pixels, a blank image) is read, with
a warning where the results suffer. No case prints a traceback or leaves a temporary file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nanoseg.atomic import is_temp_file
from nanoseg.cli.common import OUT_MARKER
from nanoseg.io import write_tiff

pytestmark = pytest.mark.usefixtures("keep_global_rng")

# Labels are measured as given; the rules alone decide (no classifier network to train).
PX = ("--set", "data.info_bar_rows=0", "--set", "classify.method=rules")


@dataclass(frozen=True)
class Case:
    """A bad input: ``setup(root, monkeypatch)`` adds it to the ``batch`` folder and returns the
    command's arguments; ``says`` are fragments (``{root}`` = that folder) the error line (exit 2),
    the failure list (exit 1) or the warnings (exit 0) must hold."""

    id: str
    setup: Callable[[Path, pytest.MonkeyPatch], list]
    code: int
    says: tuple[str, ...]


def measure(root: Path, *images: object, out: str = "out", extra: tuple = ()) -> list:
    return ["measure", *images, "--labels", root / "labels", "--out", root / out, *PX, *extra]


def writes(files: dict[str, str | bytes | None], args: Callable[[Path], list]):
    """A setup that writes ``files`` (paths below the folder; None makes a folder), then gives ``args(root)``."""
    def setup(root, _):
        for name, content in files.items():
            path = root / name
            if content is None:
                path.mkdir()
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        return args(root)
    return setup


def random_bytes(path: Path, n: int = 3000) -> Path:
    path.write_bytes(np.random.default_rng(3).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def image_of(root: Path, stem: str = "a") -> np.ndarray:
    return tifffile.imread(root / "images" / f"{stem}.tif")


# --------------------------------------------------------------------------- micrographs


def truncated(root, _):
    data = (root / "images" / "b.tif").read_bytes()
    (root / "images" / "b.tif").write_bytes(data[: len(data) // 2])
    return measure(root, root / "images")


def multi_page(root, _):
    # Three frames stored as three pages: reading the first alone would measure a third of the data.
    with tifffile.TiffWriter(root / "images" / "b.tif") as tif:
        for _ in range(3):
            tif.write(image_of(root))
    return measure(root, root / "images")


def stack(root, _):
    # The same three frames as one 3-D series.
    tifffile.imwrite(root / "images" / "b.tif", np.stack([image_of(root)] * 3), photometric="minisblack")
    return measure(root, root / "images")


def too_small(root, _):
    write_tiff(root / "images" / "b.tif", image_of(root)[:20, :20], pixel_size_nm=2.0)
    return measure(root, root / "images")


def colour(channels: int):
    def setup(root, _):
        gray = image_of(root)
        planes = [gray, gray // 2, gray // 3, np.full_like(gray, 255)][:channels]
        tifffile.imwrite(root / "images" / "a.tif", np.dstack(planes))
        return measure(root, root / "images", extra=("--pixel-size", "2nm"))  # the RGB file states none
    return setup


def with_nan(root, _):
    image = image_of(root).astype(np.float32) / 255
    image[:4] = np.nan  # a dropped scan line, as some exports write it
    write_tiff(root / "images" / "a.tif", image, pixel_size_nm=2.0)
    return measure(root, root / "images")


def blank(root, _):
    write_tiff(root / "images" / "a.tif", np.full((64, 64), 7, np.uint8), pixel_size_nm=2.0)
    return measure(root, root / "images")


def beyond_bit_depth(root, _):
    image = image_of(root).astype(np.uint16) * 16
    image[0, 0] = 5100  # a 13-bit value in data said to be 12-bit
    write_tiff(root / "images" / "a.tif", image, pixel_size_nm=2.0)
    return measure(root, root / "images", extra=("--set", "data.bit_depth=12"))


MICROGRAPHS = [
    Case("missing-input-folder", lambda root, _: measure(root, root / "nope"), 2,
         ("{root}/nope", "no such micrograph or folder")),
    Case("empty-folder", writes({"empty": None}, lambda root: measure(root, root / "empty")), 2,
         ("{root}/empty", "no images found", ".tif")),
    Case("not-an-image-file", writes({"notes.txt": "x"}, lambda root: measure(root, root / "images" / "a.tif",
                                                                             root / "notes.txt")), 1,
         ("{root}/notes.txt", "unsupported image type '.txt'", "use TIFF, PNG")),
    Case("text-named-tif", writes({"images/b.tif": "not a TIFF"}, lambda root: measure(root, root / "images")), 1,
         ("{root}/images/b.tif", "cannot read image", "re-export")),
    Case("truncated-tiff", truncated, 1, ("{root}/images/b.tif", "cannot read image", "check the file is complete")),
    Case("random-bytes-only", lambda root, _: measure(root, random_bytes(root / "junk.tif")), 2,
         ("none of the 1 micrograph(s) could be used", "{root}/junk.tif", "cannot read image")),
    Case("zero-bytes", writes({"images/b.tif": b""}, lambda root: measure(root, root / "images")), 1,
         ("{root}/images/b.tif", "file is empty", "re-export")),
    Case("multi-page-tiff", multi_page, 1, ("{root}/images/b.tif", "holds 3 images", "single 2-D image per file")),
    Case("stack-tiff", stack, 1, ("{root}/images/b.tif", "stack of shape (3, 64, 64)", "single 2-D image per file")),
    Case("rgb-is-read-as-gray", colour(3), 0, ("kept",)),
    Case("rgba-is-read-as-gray", colour(4), 0, ("kept",)),
    Case("smaller-than-min-side", too_small, 1, ("{root}/images/b.tif", "smaller than 32 px", "full-size micrograph")),
    Case("info-bar-taller-than-image", lambda root, _: ["measure", root / "images", "--labels", root / "labels",
                                                        "--out", root / "out", "--set", "data.info_bar_rows=60"], 2,
         ("info_bar_rows=60 leaves fewer than 32 rows", "set data.info_bar_rows")),
    Case("smaller-than-a-tile", lambda root, _: ["run", root, "--out", root / "run", "--profile", "demo",
                                                 "--set", "shapes.source=polygon", "--set", "translate.method=cyclegan",
                                                 "--set", "data.info_bar_rows=0"], 2,
         ("{root}/images/a.tif", "smaller than translate.tile_size_px=128", "lower it")),
    Case("values-beyond-bit-depth", beyond_bit_depth, 2,
         ("{root}/images/a.tif", "values reach 5100, more than 12-bit", "set data.bit_depth")),
    Case("nan-pixels-warn", with_nan, 0, ("NaN or infinite", "re-export the image")),
    Case("blank-image-warns", blank, 0, ("image is blank", "no particles can be found")),
]

# --------------------------------------------------------------------------- labels, models


def label_of_wrong_shape(root, _):
    write_tiff(root / "labels" / "b.tif", np.zeros((40, 64), np.uint16))
    return measure(root, root / "images")


def label_missing(root, _):
    (root / "labels" / "b.tif").unlink()
    return measure(root, root / "images")


MODELS = [
    Case("missing-label-image", label_missing, 1, ("{root}/images/b.tif", "no label image for micrograph")),
    Case("label-shape-mismatch", label_of_wrong_shape, 1,
         ("{root}/images/b.tif", "{root}/labels/b.tif: labels shape (40, 64) differs")),
    Case("labels-folder-missing", lambda root, _: ["measure", root / "images", "--labels", root / "nolabels",
                                                   "--out", root / "out"], 2,
         ("--labels {root}/nolabels", "no such folder", "give the folder of label images")),
    Case("neither-model-nor-labels", lambda root, _: ["measure", root / "images", "--out", root / "out"], 2,
         ("give --model", "or --labels")),
    Case("model-missing", lambda root, _: ["measure", root / "images", "--model", root / "none.pt",
                                           "--out", root / "out"], 2, ("{root}/none.pt", "model file not found")),
    Case("model-random-bytes", lambda root, _: ["segment", "predict", root / "images", "--model",
                                                random_bytes(root / "model.pt"), "--out", root / "seg"], 2,
         ("{root}/model.pt", "not a readable nanoseg model", "retrain")),
    Case("model-text-file", writes({"model.pt": "weights: none"}, lambda root: [
         "measure", root / "images", "--model", root / "model.pt", "--out", root / "out"]), 2,
         ("{root}/model.pt", "not a readable nanoseg model", "retrain")),
    Case("classifier-missing", lambda root, _: measure(root, root / "images", extra=("--classifier", root / "c.pt")),
         2, ("{root}/c.pt", "model file not found")),
    Case("classifier-random-bytes", lambda root, _: measure(root, root / "images",
                                                            extra=("--classifier", random_bytes(root / "c.pt"))),
         2, ("{root}/c.pt", "not a readable nanoseg model")),
]

# --------------------------------------------------------------------------- pixel size


def needs_pixel_size(root, _):
    from skimage.draw import disk

    (root / "outlines").mkdir()
    for i in range(3):
        outline = np.zeros((32, 32), np.uint8)
        outline[disk((16, 16), 6 + i)] = 255
        write_tiff(root / "outlines" / f"o{i}.tif", outline)
    (root / "unscaled").mkdir()
    write_tiff(root / "unscaled" / "a.tif", image_of(root))  # no pixel size in the file
    return ["masks", "simulate", root / "outlines", "--images", root / "unscaled", "--n", "1", "--out", root / "fake",
            "--set", "masks.size_prior=expected", "--set", "data.expected_size_nm=20", "--set", "data.info_bar_rows=0"]


PIXEL_SIZE = [
    Case(f"pixel-size-{text}", lambda root, _, text=text: measure(root, root / "images", extra=("--pixel-size", text)),
         2, (f"--pixel-size '{text}'", fix))
    for text, fix in [("fast", "e.g. 7.34nm"), ("-3nm", "positive, finite length"), ("0", "positive, finite length"),
                      ("nan", "e.g. 7.34nm"), ("3parsec", "use nm, um or m")]
] + [
    Case("no-pixel-size-where-needed", needs_pixel_size, 2,
         ("masks.size_prior=expected", "needs data.expected_size_nm and a pixel size", "data.pixel_size_nm")),
]

# --------------------------------------------------------------------------- config


def config_check(text: str):
    def setup(root, _):
        (root / "cfg.yaml").write_text(text)
        return ["config", "check", root / "cfg.yaml"]
    return setup


def config_init(*sets: str):
    return lambda root, _: ["config", "init", *(a for s in sets for a in ("--set", s))]


CONFIG = [
    Case("config-unknown-key", config_check("segment:\n  stepz: 3\n"), 2,
         ("{root}/cfg.yaml", "unknown key 'segment.stepz'", "nanoseg config docs")),
    Case("config-nan", config_check("segment:\n  learning_rate: .nan\n"), 2,
         ("{root}/cfg.yaml", "'segment.learning_rate'", "not a finite number")),
    Case("config-wrong-type", config_check("segment:\n  steps: many\n"), 2,
         ("{root}/cfg.yaml", "'segment.steps'", "valid integer", "got 'many'")),
    Case("config-probability-out-of-range", config_check("segment:\n  threshold: 1.7\n"), 2,
         ("{root}/cfg.yaml", "bad value for 'segment.threshold': Input should be less than or equal to 1, or should "
          "be 'auto' (got 1.7)",)),
    Case("config-negative-steps", config_check("segment:\n  steps: -5\n"), 2,
         ("{root}/cfg.yaml", "'segment.steps'", "greater than or equal to 1")),
    Case("config-yaml-syntax", config_check("segment: [\n"), 2, ("{root}/cfg.yaml", "not valid YAML")),
    Case("config-not-a-mapping", config_check("- segment\n- steps\n"), 2,
         ("{root}/cfg.yaml", "must be a mapping of sections to settings")),
    Case("config-missing-data-folder", config_check("data:\n  images: nowhere/sem\n"), 2,
         ("{root}/cfg.yaml", "data.images nowhere/sem does not exist", "fix the path")),
    Case("config-file-missing", lambda root, _: measure(root, root / "images", extra=("--config", root / "none.yaml")),
         2, ("{root}/none.yaml", "config file not found", "nanoseg config init")),
    Case("unknown-profile", lambda root, _: ["config", "init", "--profile", "fast"], 2,
         ("unknown profile 'fast'", "demo, quick, paper")),
    Case("set-without-equals", config_init("segment.steps"), 2, ("--set 'segment.steps'", "expected KEY=VALUE")),
    Case("set-unknown-section", config_init("segmnt.steps=3"), 2, ("unknown key 'segmnt'", "nanoseg config docs")),
    Case("set-bad-yaml-value", config_init("segment.steps=["), 2,
         ("--set 'segment.steps=['", "not valid YAML", "write it as YAML")),
]

# --------------------------------------------------------------------------- --out


def marked_out(command: str):
    def setup(root, _):
        (root / "seg").mkdir()
        (root / "seg" / OUT_MARKER).write_text(json.dumps({"command": command}))
        return ["segment", "predict", root / "images", "--model", random_bytes(root / "model.pt"), "--out", root / "seg"]
    return setup


def read_only_out(root, monkeypatch):
    (root / "run").mkdir()
    # Root writes anywhere, whatever the mode: show the permission check what a user would see.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: (
        not (Path(path) == root / "run" and mode & os.W_OK) and real_access(path, mode, **kwargs)))
    return ["run", root, "--out", root / "run", "--set", "shapes.source=polygon", *PX]


OUT = [
    Case("out-is-a-file", writes({"seg": "mine"}, lambda root: [
         "segment", "predict", root / "images", "--model", random_bytes(root / "model.pt"), "--out", root / "seg"]),
         2, ("--out {root}/seg is a file", "give a folder")),
    Case("out-below-a-file", writes({"notes.txt": "mine"}, lambda root: measure(root, root / "images",
                                                                               out="notes.txt/out")), 2,
         ("{root}/notes.txt is a file", "give a folder")),
    Case("out-not-writable", read_only_out, 2, ("--out {root}/run", "permission denied", "choose another --out")),
    Case("out-of-another-command", marked_out("measure"), 2,
         ("--out {root}/seg already holds the outputs of `nanoseg measure`", "choose a new or empty folder")),
    Case("out-not-written-by-nanoseg", writes({"out": None, "out/notes.txt": "mine"},
                                              lambda root: measure(root, root / "images")), 2,
         ("files nanoseg did not write (notes.txt)", "choose a new or empty folder")),
    Case("demo-out-is-a-file", writes({"demo": "mine"}, lambda root: ["demo", "--out", root / "demo"]), 2, ("--out {root}/demo is a file", "give a folder")),
    Case("demo-data-into-a-file", lambda root, _: ["make-demo-data", root / "images" / "a.tif"], 2,
         ("OUT {root}/images/a.tif is a file", "give a folder")),
]

# --------------------------------------------------------------------------- training and whole runs


def empty_outlines(root, _):
    (root / "outlines").mkdir()
    for i in range(3):
        write_tiff(root / "outlines" / f"o{i}.tif", np.zeros((32, 32), np.uint8))
    return ["run", root, "--out", root / "run", "--profile", "demo", *PX]


def images_without_masks(root, _):
    (root / "manual" / "sem").mkdir(parents=True)
    write_tiff(root / "manual" / "sem" / "a.tif", image_of(root))
    return ["segment", "train", root / "manual", "--out", root / "model"]


RUNS = [
    Case("train-without-masks", images_without_masks, 2,
         ("{root}/manual", "no training pairs", "sem/ + masks/")),
    Case("run-without-outlines", lambda root, _: ["run", root, "--out", root / "run", *PX], 2,
         ("data.outlines: not set", "set shapes.source: polygon")),
    Case("run-with-empty-outlines", empty_outlines, 2,
         ("{root}/outlines/o0.tif", "empty outline", "draw the particle white on black")),
    Case("run-from-unknown-stage", lambda root, _: ["run", root, "--out", root / "run", "--from", "segmnt",
                                                    "--set", "shapes.source=polygon", *PX], 2,
         ("unknown stage 'segmnt'", "stages: shapes, masks")),
    Case("run-source-missing", lambda root, _: ["run", root / "nope.yaml", "--out", root / "run"], 2,
         ("{root}/nope.yaml", "no such config file or data folder")),
]

# --------------------------------------------------------------------------- evaluate, compare


def evaluate(ground_truth: Callable[[np.ndarray], dict[str, np.ndarray]], out: str = "eval.csv"):
    """Predictions pred/a.tif and pred/b.tif (0/255 masks) against ``ground_truth(mask)``'s files."""
    def setup(root, _):
        mask = tifffile.imread(root / "labels" / "a.tif") > 0
        (root / "pred").mkdir()
        (root / "gt").mkdir()
        for stem in "ab":
            write_tiff(root / "pred" / f"{stem}.tif", mask)
        for name, array in ground_truth(mask).items():
            write_tiff(root / "gt" / name, array)
        return ["evaluate", root / "pred", root / "gt", "--out", root / out]
    return setup


def anti_aliased(mask: np.ndarray) -> dict[str, np.ndarray]:
    from scipy import ndimage as ndi

    # Grey edges, as a mask saved through a smoothing or JPEG export has them.
    soft = ndi.gaussian_filter(mask.astype(float) * 255, 1.0)
    return {"a_m.tif": np.round(soft).astype(np.uint8), "b_m.tif": mask}


def compare_with(text: str | bytes | None):
    def setup(root, _):
        table = root / "manual.csv"
        if isinstance(text, bytes):
            table.write_bytes(text)
        elif text is not None:
            table.write_text(text)
        return measure(root, root / "images", extra=("--compare", table))
    return setup


EVALUATE = [
    Case("gt-anti-aliased", evaluate(anti_aliased), 2,
         ("{root}/gt/a_m.tif", "looks like an anti-aliased binary mask", "threshold it at 128")),
    Case("gt-shape-mismatch", evaluate(lambda mask: {"a_m.tif": mask[:40, :50], "b_m.tif": mask}), 2,
         ("{root}/gt/a_m.tif is 50x40 px", "predict on the same field of view")),
    Case("gt-no-common-names", evaluate(lambda mask: {"x_m.tif": mask}), 2,
         ("{root}/pred and {root}/gt", "no file names pair up", "rename the files")),
    Case("gt-missing-for-one-warns", evaluate(lambda mask: {"a_m.tif": mask}), 0,
         ("b.tif: no ground truth", "skipped")),
    Case("gt-folder-missing", lambda root, _: ["evaluate", root / "labels", root / "nogt", "--out", root / "e.csv"], 2,
         ("{root}/nogt", "no such ground-truth folder")),
    Case("evaluate-out-not-csv", evaluate(lambda mask: {"a_m.tif": mask}, out="eval.txt"), 2,
         ("--out {root}/eval.txt", "give a .csv file name")),
    Case("compare-missing", compare_with(None), 2, ("{root}/manual.csv", "particle table not found")),
    Case("compare-empty", compare_with(""), 2, ("{root}/manual.csv", "not a readable CSV table")),
    Case("compare-binary", compare_with(b"\x00\x01image\xff\xfe,kept\n\xff"), 2,
         ("{root}/manual.csv", "not a readable CSV table")),
    Case("compare-no-size-column", compare_with("image,kept,area_px\na,true,40\n"), 2,
         ("{root}/manual.csv", "no column 'min_feret_nm'")),
    Case("compare-not-numbers", compare_with("image,kept,min_feret_nm\na,true,big\n"), 2,
         ("{root}/manual.csv", "'min_feret_nm' holds values that are not numbers")),
    Case("compare-no-particles", compare_with("image,kept,min_feret_nm\n"), 2,
         ("{root}/manual.csv", "no kept particle with a 'min_feret_nm'")),
]

CASES = MICROGRAPHS + MODELS + PIXEL_SIZE + CONFIG + OUT + RUNS + EVALUATE


def test_the_table_is_large_and_unambiguous():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) below ``root``."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def check_case(case: Case, root: Path, cli, monkeypatch) -> None:
    """Run ``case`` on the ``batch`` folder ``root`` and check that it ends as the table says.

    The other ``test_bad_input_*.py`` files run their own tables through here.
    """
    monkeypatch.chdir(root)  # a default output path would land here, where the tree comparison sees it
    args = case.setup(root, monkeypatch)
    before = _tree(root)
    res = cli(*args)
    says = [fragment.format(root=root) for fragment in case.says]
    assert "Traceback" not in res.output
    assert res.code == case.code, res.output
    if case.code == 2:
        line = res.error_line()
        assert all(fragment in line for fragment in says), line
        # "Nothing was done": no output started, and an earlier one (or a file in the way) untouched.
        assert _tree(root) == before
    elif case.code == 1:
        assert "failed: 1 of" in res.err and all(fragment in res.err for fragment in says), res.err
        summary = json.loads((root / "out" / "summary.json").read_text())  # complete, and says what is missing
        assert [Path(f["image"]) for f in summary["failures"]] == [Path(says[0])]
    else:
        # Logged warnings are wrapped to the terminal's width: compare the words.
        words = " ".join(res.output.split())
        assert all(fragment in words for fragment in says), res.output
    assert [p for p in root.rglob("*") if is_temp_file(p)] == []


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_ends_cleanly(case, batch, cli, monkeypatch):
    check_case(case, batch, cli, monkeypatch)
