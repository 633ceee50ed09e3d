"""Export a trained segmentation net to ONNX (probabilities out, as `nanoseg segment predict` uses them)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nanoseg.atomic import atomic_path

logger = logging.getLogger("nanoseg.segment")


def export_onnx(model_path: str | Path, onnx_path: str | Path, opset: int = 18) -> Path:
    """Export a model to ONNX with input ``image`` (N, 1, H, W) and output ``probabilities``.

    Batch, height and width are dynamic (sides of at least the network's multiple,
    ``2**depth`` px); the graph includes the reflect padding to that multiple and the softmax
    (three-class) or sigmoid (binary).
    """
    import warnings

    import torch

    from nanoseg import nets

    net, meta = nets.load(model_path, "cpu")
    wrapper = _ProbabilityModule(net, meta["target"]).eval()
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
    return onnx_path


def _probability_module_class() -> type:
    import torch

    class ProbabilityModule(torch.nn.Module):
        def __init__(self, net: torch.nn.Module, target: str) -> None:
            super().__init__()
            self.net = net
            self.target = target

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.net(x)
            return torch.softmax(logits, dim=1) if self.target == "three_class" else torch.sigmoid(logits)

    return ProbabilityModule


def _ProbabilityModule(net: Any, target: str) -> Any:  # noqa: N802 - factory named like the class it builds
    return _probability_module_class()(net, target)


