"""Export a trained segmentation net to ONNX (probabilities out, as `nanoseg segment predict` uses them)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from nanoseg import nets
from nanoseg.atomic import atomic_path
from nanoseg.errors import NanosegError
from nanoseg.segment.data import probabilities_from_logits

logger = logging.getLogger("nanoseg.segment")


def export_onnx(model_path: str | Path, onnx_path: str | Path, opset: int = 18) -> Path:
    """Export a model to ONNX with input ``image`` (N, 1, H, W) and output ``probabilities``.

    Batch, height and width are dynamic (sides of at least the network's multiple,
    ``2**depth`` px); the graph includes the reflect padding to that multiple and the softmax
    (three-class) or sigmoid (binary). The model's meta (target, training pixel size,
    post-processing config) goes into the file's metadata as ``nanoseg`` (JSON), so that
    :func:`load_onnx` segments with it as with the ``.pt`` model.
    """
    import onnx
    import torch

    net, meta = nets.load(model_path, "cpu", kind="segmenter")
    wrapper = probability_module(net, meta["target"]).eval()
    multiple = net.multiple
    # Odd sides, so that the traced graph contains the padding.
    example = torch.rand(1, 1, 3 * multiple + 5, 4 * multiple + 3)
    onnx_path = Path(onnx_path)
    axes = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(onnx_path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript exporter traces the padding arithmetic on dynamic sizes and
            # takes about a second; the dynamo exporter takes ~30 s for the same graph.
            torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, input_names=["image"],
                              output_names=["probabilities"], opset_version=opset,
                              dynamic_axes={"image": axes, "probabilities": axes})
        except Exception as exc:  # noqa: BLE001 - the legacy exporter may be gone in later torch
            logger.warning("segment export: the TorchScript ONNX exporter failed (%s); using the dynamo exporter (slower, same model)", exc)
            dims = {0: torch.export.Dim("batch", min=1, max=1024),
                    2: torch.export.Dim("height", min=multiple + 1, max=16384),
                    3: torch.export.Dim("width", min=multiple + 1, max=16384)}
            program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=["image"],
                                        output_names=["probabilities"], dynamic_shapes={"x": dims},
                                        opset_version=opset, verbose=False)
            program.save(str(tmp))
        graph = onnx.load(str(tmp))
        entry = graph.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(meta, default=str)
        onnx.save(graph, str(tmp))
    return onnx_path


META_KEY = "nanoseg"


class OnnxModel:
    """An exported segmentation net run by ONNX Runtime: what :func:`nanoseg.segment.segment_image`
    takes in place of a torch net (it already outputs probabilities)."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def probabilities(self, tile: Any) -> Any:
        """(H, W) float32 -> (C, H, W) probabilities."""
        import numpy as np

        x = np.ascontiguousarray(tile, dtype=np.float32)[None, None]
        return self.session.run(None, {self.input_name: x})[0][0]


def load_onnx(path: str | Path) -> tuple[OnnxModel, dict[str, Any]]:
    """An exported model and the meta :func:`export_onnx` stored in it.

    Raises
    ------
    NanosegError
        If the file is not an ONNX model or was not exported by nanoseg (no meta).
    """
    try:
        model = OnnxModel(path)
    except ImportError as exc:
        raise NanosegError(f"{path}: ONNX models need onnxruntime (pip install 'nanoseg[onnx]')") from exc
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise NanosegError(f"{path}: not a readable ONNX model ({exc})") from exc
    stored = model.session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if stored is None:
        raise NanosegError(f"{path}: no nanoseg metadata in this ONNX file; export it with `nanoseg segment export`")
    meta = json.loads(stored)
    nets.check_kind(path, meta, "segmenter")
    return model, meta


def _probability_module_class() -> type:
    import torch

    class ProbabilityModule(torch.nn.Module):
        def __init__(self, net: torch.nn.Module, target: str) -> None:
            super().__init__()
            self.net = net
            self.target = target

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return probabilities_from_logits(self.net(x), self.target)

    return ProbabilityModule


def probability_module(net: Any, target: str) -> Any:
    """``net`` wrapped to output what :func:`nanoseg.segment.predict_probabilities` gives (softmax for
    three-class, sigmoid for binary; centres: sigmoid particle and centre channels, offsets in px), as exported."""
    return _probability_module_class()(net, target)


