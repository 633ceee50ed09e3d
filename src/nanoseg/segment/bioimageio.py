"""Export a trained segmentation net as a bioimage.io model package (spec format 0.5).

The package holds TorchScript and ONNX weights that output class probabilities (softmax or
sigmoid included), a test input and its output, a cover image and a README generated from the
model's metadata. nanoseg's watershed, which turns probabilities into particles, is not part of
it. ``bioimageio.spec`` is an optional dependency (``pip install "nanoseg[bioimageio]"``) and
is imported only inside these functions.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nanoseg import __version__, nets
from nanoseg.atomic import atomic_path
from nanoseg.config import SegmentConfig
from nanoseg.errors import NanosegError
from nanoseg.io import read_micrograph, write_png
from nanoseg.segment.data import OFFSET_SCALE_PX
from nanoseg.segment.export import export_onnx, probability_module
from nanoseg.segment.infer import particle_probability, to_model_scale
from nanoseg.segment.instances import foreground_threshold

INSTALL_HINT = 'bioimage.io export needs bioimageio.spec and bioimageio.core: pip install "nanoseg[bioimageio]"'
PAPER = "Rühle, Krumrey & Hodoroaba, Sci. Rep. 11, 4942 (2021)"
PAPER_DOI = "10.1038/s41598-021-84287-6"
#: What each output channel means, per target kind.
CHANNELS = {
    "three_class": {
        "background": "no particle",
        "interior": "particle pixels away from the particle's outline",
        "boundary": "a band along each particle's outline, also where particles touch",
    },
    "binary": {"particle": "any particle pixel"},
    "centres": {
        "particle": "any particle pixel",
        "centre": "a peak at each particle's centre (its innermost pixel)",
        "offset_rows": "rows from the pixel to its own particle's centre, in px",
        "offset_cols": "columns from the pixel to its own particle's centre, in px",
    },
}
#: How the exported weights turn logits into the outputs, per target kind.
ACTIVATIONS = {"three_class": "Softmax over the channels.", "binary": "Sigmoid of the logit.",
               "centres": f"Sigmoid of channels 0-1; channels 2-3 are the offset logits times {OFFSET_SCALE_PX:g} (px)."}
#: Side of the synthetic test image before rounding to the net's multiple.
TEST_SIDE_PX = 128
#: Largest side of a test crop taken from --sample (test tensors are stored in the package).
MAX_SAMPLE_SIDE_PX = 256


def require_bioimageio() -> None:
    """Raise a one-line :class:`NanosegError` with the install command when bioimageio is missing."""
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise NanosegError(INSTALL_HINT) from None


def sample_input(multiple: int, meta: dict[str, Any], sample: str | Path | None = None) -> np.ndarray:
    """A deterministic (1, 1, S, S) float32 test input whose side S is a multiple of ``multiple``.

    Parameters
    ----------
    multiple : int
        The net's size multiple, ``2**depth``.
    meta : dict
        Model metadata; its ``pixel_size_nm`` resamples ``sample`` like :func:`segment_image` does.
    sample : path-like, optional
        A micrograph: read as nanoseg reads micrographs (``read_micrograph``: [0, 1], info bar
        cropped), resampled to the model's pixel size and centre-cropped to at most
        :data:`MAX_SAMPLE_SIDE_PX`. Default: synthetic touching bright discs.

    Returns
    -------
    (1, 1, S, S) float32 array spanning exactly [0, 1]
        Stretched to its own minimum and maximum, so that the package's ``scale_range``
        preprocessing leaves it unchanged and the stored test output is nanoseg's output.
    """
    if sample is None:
        image = _synthetic_discs(multiple * max(1, round(TEST_SIDE_PX / multiple)))
    else:
        mg = read_micrograph(sample)
        image, _ = to_model_scale(mg.image, mg.pixel_size_nm, meta)
        side = min(MAX_SAMPLE_SIDE_PX, *image.shape) // multiple * multiple
        if side == 0:
            raise NanosegError(f"{sample}: too small for a test input (sides of at least {multiple} px needed)")
        y0, x0 = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        image = image[y0 : y0 + side, x0 : x0 + side]
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        raise NanosegError(f"{sample}: the test crop is blank (one value); pass another --sample")
    return ((image - lo) / (hi - lo)).astype(np.float32)[None, None]


def _synthetic_discs(side: int) -> np.ndarray:
    """Bright discs, two of them touching, on a darker noisy background; the same every call."""
    from scipy import ndimage as ndi

    yy, xx = np.mgrid[:side, :side] / side
    image = np.full((side, side), 0.25)
    for cy, cx, r in [(0.3, 0.3, 0.12), (0.3, 0.53, 0.11), (0.7, 0.65, 0.15), (0.72, 0.25, 0.08)]:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0.75
    noise = np.random.default_rng(0).normal(0.0, 0.04, image.shape)
    return ndi.gaussian_filter(image, 1.0) + noise


def export_bioimageio(model_path: str | Path, package_path: str | Path, sample: str | Path | None = None) -> Path:
    """Write a model written by :func:`train` as a bioimage.io model package (zip, spec format 0.5).

    Parameters
    ----------
    model_path : path-like
        A nanoseg segmentation model (``model.pt``).
    package_path : path-like
        The zip to write (atomically).
    sample : path-like, optional
        Micrograph the test input is cropped from (see :func:`sample_input`).

    Returns
    -------
    Path
        ``package_path``.

    Raises
    ------
    NanosegError
        If bioimageio is not installed, or the sample is unusable.
    """
    require_bioimageio()
    import tifffile
    import torch
    from bioimageio.spec import save_bioimageio_package

    net, meta = nets.load(model_path, "cpu", kind="segmenter")
    # The weights output probabilities (as the ONNX export does), so the package is usable
    # as-is: no postprocessing to declare, and its outputs are what nanoseg thresholds.
    wrapper = probability_module(net, meta["target"]).eval()
    x = sample_input(net.multiple, meta, sample)
    with torch.no_grad():
        y = wrapper(torch.from_numpy(x)).numpy()
    with tempfile.TemporaryDirectory(prefix="nanoseg-bioimageio-") as tmp_dir:
        tmp = Path(tmp_dir)
        np.save(tmp / "test_input.npy", x)
        np.save(tmp / "test_output.npy", y)
        # Sample tensors are the same images in a format viewers read (bioimage.io's FAIR check asks for them).
        tifffile.imwrite(tmp / "sample_input.tif", x[0, 0], photometric="minisblack")
        tifffile.imwrite(tmp / "sample_output.tif", y[0], photometric="minisblack")
        write_png(tmp / "cover.png", _cover(x[0, 0], y[0], meta["target"]))
        (tmp / "README.md").write_text(documentation(net, meta, Path(model_path).name))
        _save_torchscript(wrapper, net.multiple, tmp / "weights.pt")
        export_onnx(model_path, tmp / "weights.onnx")
        descr = describe(net, meta, tmp)
        with atomic_path(package_path) as out:
            save_bioimageio_package(descr, output_path=out)
    return Path(package_path)


def _save_torchscript(wrapper: Any, multiple: int, path: Path) -> None:
    """Trace ``wrapper`` (net + softmax/sigmoid) on the CPU and save it as TorchScript."""
    import warnings

    import torch

    # Odd sides, as in export_onnx: the trace then records the padding to the net's multiple
    # with the sizes as variables instead of skipping it as a no-op.
    example = torch.rand(1, 1, 3 * multiple + 5, 4 * multiple + 3)
    with warnings.catch_warnings(), torch.no_grad():
        # Tracer warnings about shape arithmetic (which is what we want traced), and torch.jit's
        # deprecation: bioimage.io's TorchScript weights format is what this writes.
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(wrapper, example, check_trace=False), str(path))


def _cover(image: np.ndarray, probs: np.ndarray, target: str) -> np.ndarray:
    """RGB uint8: the test input beside its particle probability (magma), 2:1 as bioimage.io asks."""
    from matplotlib import colormaps

    left = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    right = colormaps["magma"](particle_probability(probs, target))[..., :3]
    return np.round(np.concatenate([left, right], axis=1) * 255).astype(np.uint8)


def _without_annotation(meta: dict[str, Any]) -> bool:
    """True when every training pair is named as nanoseg's `pairs` stage names its synthetic pairs."""
    names = meta.get("train_pairs") or []
    return bool(names) and all(re.fullmatch(r"pair_\d+", n) for n in names)


def _training_note(meta: dict[str, Any]) -> str:
    """What the model file says about its training data, and nothing more."""
    names = meta.get("train_pairs") or []
    if not _without_annotation(meta):
        return ("The model file does not record how its training masks were made"
                f"{f' ({len(names)} training pairs)' if names else ''}.")
    note = (f"Trained by nanoseg without manual annotation: all {len(names)} training pairs are named pair_NNNN, "
            "as nanoseg's `pairs` stage names the synthetic micrograph/mask pairs it generates.")
    if meta.get("extra_pairs"):
        note += (f" It was then fine-tuned on {len(meta['extra_pairs'])} further pairs (nanoseg's `adapt` stage "
                 "makes them from real micrographs and the net's own pseudo-labels).")
    return note


def _validation_note(meta: dict[str, Any]) -> str:
    """The validation score the model file records, if any."""
    if meta.get("val_iou") is None:
        return "The model file records no validation score."
    return (f"Foreground IoU {meta['val_iou']:.3f} on {len(meta.get('val_pairs', []))} held-out validation pair(s) "
            f"at training step {meta.get('step')}, as the model file records.")


def documentation(net: Any, meta: dict[str, Any], model_name: str) -> str:
    """The package's README (Markdown), generated from the net and its metadata."""
    target = meta["target"]
    cfg = SegmentConfig.model_validate(meta.get("config", {"target": target}))
    threshold = foreground_threshold(cfg, meta)
    px = meta.get("pixel_size_nm")
    channels = "\n".join(f"| {i} | {name} | {what} |" for i, (name, what) in enumerate(CHANNELS[target].items()))
    if target == "three_class":
        particle = "The particle probability is 1 - background (interior + boundary)."
        giveback = (f"each marker grows by at most {cfg.boundary_width_px} px into the foreground"
                    if cfg.band_giveback == "expand" else "a watershed floods the foreground from the markers")
        post = (f"pixels with particle probability above {threshold:g} are foreground; markers are the regions "
                f"of interior probability above {cfg.marker_threshold:g}, split by a watershed at interior maxima "
                f"{cfg.marker_h:g} high; {giveback}")
    elif target == "centres":
        particle = "Channel 0 is the particle probability."
        post = (f"pixels with particle probability above {threshold:g} are foreground; each votes at its position "
                f"plus its offset (channels 2-3); centres are where at least {cfg.min_size_px} votes gather (within a "
                f"Gaussian of 2 px), at least {cfg.min_distance_px} px apart; each foreground pixel joins the centre "
                "nearest to its vote within its connected foreground region (channel 1, the centre heatmap, is an "
                "auxiliary training output)")
    else:
        particle = "Channel 0 is the particle probability."
        post = (f"pixels with particle probability above {threshold:g} are foreground; a watershed on the "
                f"distance transform (Gaussian sigma {cfg.smoothing_sigma_px:g} px) from maxima at least "
                f"{cfg.min_distance_px} px apart splits touching particles")
    scale = (f"The net was trained at **{px:g} nm per pixel**. Resample micrographs to {px:g} nm/px before applying "
             "it (nanoseg does so when the pixel sizes differ by more than 5 %): particle sizes in pixels are what it "
             "learned." if px else
             "The model file records no training pixel size: apply it at the pixel size of its training images.")
    return f"""# nanoseg particle segmentation ({target})

Segments nanoparticles in electron micrographs (SEM/TEM) into per-pixel class probabilities.
Exported by nanoseg {__version__} from `{model_name}`.

## Network

{net.registry_name} ({", ".join(f"{k}={v}" for k, v in net.init_kwargs.items())}): 1 input channel, raw logits
turned into probabilities inside the exported weights (TorchScript and ONNX, same graph). Input height and
width must be multiples of {net.multiple} (2**depth); the net pads other sizes itself, the package declares
multiples only.

## Output channels

| channel | name | meaning |
| --- | --- | --- |
{channels}

{ACTIVATIONS[target]} {particle}

## Pixel size

{scale}

## Input

float32 in [0, 1] with **bright particles** on a darker background (invert TEM or other dark-particle
images first). nanoseg's reader scales uint8 by 1/255, wider unsigned integers by the detector's bit depth
(2**bits - 1), and float images outside [0, 1] by their minimum and maximum. The package's preprocessing,
`scale_range` over y and x from the 0th to the 100th percentile, maps each image's own minimum and maximum
to 0 and 1: the same as nanoseg for float images and for images that use their full range, a contrast
stretch otherwise.

## Post-processing (in nanoseg, not in this package)

nanoseg turns the probabilities into particles with a watershed: {post}; particles under {cfg.min_size_px} px
are removed. Run `nanoseg segment predict` for that; bioimage.io tools give the probabilities only.

## Validation

{_validation_note(meta)} The package's test output is what nanoseg's net computes for its test input
(float32, CPU).

## Training data

{_training_note(meta)}

## Citation

{PAPER}, doi:{PAPER_DOI}: the workflow nanoseg implements.
"""


def describe(net: Any, meta: dict[str, Any], folder: Path) -> Any:
    """The ``ModelDescr`` of the files :func:`export_bioimageio` wrote into ``folder``."""
    import onnx
    import torch
    from bioimageio.spec.model import v0_5 as bio

    target = meta["target"]
    px = meta.get("pixel_size_nm")
    # Physical axes when the training pixel size is known: tools can then resample for the user.
    space = {"unit": "nanometer", "scale": float(px)} if px else {}
    size = bio.ParameterizedSize(min=net.multiple, step=net.multiple)
    image_id = bio.TensorId("image")
    inputs = bio.InputTensorDescr(
        id=image_id,
        description="micrograph, bright particles, scaled to [0, 1]",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=["image"]),
              bio.SpaceInputAxis(id=bio.AxisId("y"), size=size, **space),
              bio.SpaceInputAxis(id=bio.AxisId("x"), size=size, **space)],
        test_tensor=bio.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=bio.FileDescr(source=folder / "sample_input.tif"),
        preprocessing=[
            bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32")),
            bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(axes=[bio.AxisId("y"), bio.AxisId("x")],
                                                            min_percentile=0.0, max_percentile=100.0)),
        ],
    )
    outputs = bio.OutputTensorDescr(
        id=bio.TensorId("probabilities"),
        description=f"{target} class probabilities; watershed post-processing not included",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=list(CHANNELS[target])),
              *(bio.SpaceOutputAxis(id=bio.AxisId(a), size=bio.SizeReference(tensor_id=image_id, axis_id=bio.AxisId(a)),
                                    **space) for a in "yx")],
        test_tensor=bio.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=bio.FileDescr(source=folder / "sample_output.tif"),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    opset = next(o.version for o in onnx.load(str(folder / "weights.onnx")).opset_import if o.domain in ("", "ai.onnx"))
    weights = bio.WeightsDescr(
        torchscript=bio.TorchscriptWeightsDescr(source=folder / "weights.pt",
                                                pytorch_version=bio.Version(torch.__version__.split("+")[0])),
        # Both are exports of the same nanoseg net; the spec wants exactly one original.
        onnx=bio.OnnxWeightsDescr(source=folder / "weights.onnx", opset_version=opset, parent="torchscript"),
    )
    return bio.ModelDescr(
        name=f"nanoseg {net.registry_name} particle segmentation ({target})",
        description=("Nanoparticle segmentation of electron micrographs: per-pixel probabilities of "
                     + ", ".join(CHANNELS[target]) + ". nanoseg splits particles with a watershed (not included)."),
        authors=[bio.Author(name="nanoseg developers")],
        cite=[bio.CiteEntry(text=f"{PAPER}: the workflow nanoseg implements"
                            + ("; this network was trained by nanoseg without manual annotation"
                               if _without_annotation(meta) else ""), doi=bio.Doi(PAPER_DOI))],
        license=bio.LicenseId("MIT"),
        tags=list(dict.fromkeys(["electron-microscopy", "2d", "pytorch", "onnx", "torchscript", "unet",
                                 net.registry_name, "semantic-segmentation", "nanoparticles", "nanoseg"])),
        documentation=bio.FileDescr(source=folder / "README.md"),
        covers=[bio.FileDescr(source=folder / "cover.png")],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        config={"nanoseg": {"architecture": net.registry_name, "kwargs": net.init_kwargs, "target": target,
                            "pixel_size_nm": px, "threshold": meta.get("threshold"), "segment": meta.get("config")}},
    )
