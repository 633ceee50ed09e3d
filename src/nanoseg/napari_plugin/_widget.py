"""napari widgets: "Segment and measure" (a trained model on the current micrograph, in a worker
thread) and "Measure labels" (re-measure a Labels layer after editing it; export like
``nanoseg measure``). The work itself is in :mod:`nanoseg.napari_plugin.core`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import Container, FileEdit, Label, ProgressBar, PushButton, Table, create_widget

from nanoseg.errors import NanosegError
from nanoseg.napari_plugin import core


def _path_or_none(widget: FileEdit) -> Path | None:
    value = str(widget.value or "")
    return Path(value) if value not in ("", ".") else None


class _Results(Container):
    """What both widgets show after measuring: a status line, the particle table, the histogram."""

    def __init__(self, viewer: Any) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self.status = Label(value="", label="status")
        self.table = Table(value=[], label="particles")
        self.measured: core.Measured | None = None

    def _finish_layout(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.extend([self.status, self.table])
        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.axis = self.figure.add_subplot()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.native.layout().addWidget(self.canvas)

    def _show(self, measured: core.Measured, layer: Any) -> None:
        self.measured = measured
        self.table.value = core.particle_table(measured.particles)
        core.size_histogram(measured.particles, self.axis)
        self.canvas.draw_idle()
        kept = int(measured.particles["kept"].sum())
        self.status.value = f"{layer.name}: kept {kept} of {len(measured.particles)} particles"
        if measured.warnings:
            self.status.value += " (" + "; ".join(measured.warnings) + ")"

    def _show_labels(self, measured: core.Measured, name: str, like: Any) -> Any:
        """Put the labels into the layer ``name`` (created when missing), coloured kept/discarded."""
        kwargs = core.labels_layer_kwargs(measured, name, scale=like.scale, units=getattr(like, "units", None))
        if name in self._viewer.layers:
            layer = self._viewer.layers[name]
            layer.data = measured.labels
            _restyle(layer, kwargs)
            return layer
        kwargs["colormap"] = _direct_colormap(kwargs["colormap"])
        return self._viewer.add_labels(measured.labels, **kwargs)

    def _error(self, exc: BaseException) -> None:
        self.status.value = f"error: {exc}"


def _restyle(layer: Any, kwargs: dict[str, Any]) -> None:
    """Give an existing Labels layer the features, colours and metadata of :func:`core.labels_layer_kwargs`."""
    layer.features = kwargs["features"]
    layer.colormap = _direct_colormap(kwargs["colormap"])
    layer.metadata.update(kwargs["metadata"])


def _direct_colormap(colors: dict) -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=colors)


class SegmentAndMeasure(_Results):
    """Segment the chosen micrograph with a trained model, keep/discard, measure; in a worker thread."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.image = create_widget(annotation="napari.layers.Image", label="micrograph")
        self.model = FileEdit(label="model", filter="*.pt *.onnx",
                              tooltip="A segmentation model: RUN/adapt/model.pt, or its ONNX export")
        self.classifier = FileEdit(label="classifier", filter="*.pt",
                                   tooltip="Optional keep/discard network: RUN/classify/model.pt")
        self.run_button = PushButton(text="Segment and measure")
        self.progress = ProgressBar(value=0, min=0, max=len(core.STEPS), label="progress")
        self.extend([self.image, self.model, self.classifier, self.run_button, self.progress])
        self._finish_layout()
        self.run_button.changed.connect(self.start)
        self.worker: Any = None

    def start(self) -> Any:
        """Start the worker; returns it (its ``finished`` signal fires when the layer is in place)."""
        from napari.qt.threading import create_worker

        layer = self.image.value
        model = _path_or_none(self.model)
        if layer is None or model is None:
            self.status.value = "pick a micrograph layer and a model file first"
            return None
        size = core.layer_pixel_size_nm(layer.metadata, layer.scale, getattr(layer, "units", None))
        worker = create_worker(core.segment_and_measure_steps, layer.name, layer.data, size, model,
                               _path_or_none(self.classifier), _start_thread=False)
        worker.yielded.connect(self._step)
        worker.returned.connect(lambda measured: self._done(measured, layer))
        worker.errored.connect(self._error)
        self.run_button.enabled = False
        worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.progress.value = 0
        self.status.value = "running"
        self.worker = worker
        worker.start()
        return worker

    def _done(self, measured: core.Measured, layer: Any) -> None:
        self._show(measured, self._show_labels(measured, f"{layer.name} particles", layer))
        self.progress.value = len(core.STEPS)
        self.progress.label = "done"

    def _step(self, index: int) -> None:
        self.progress.value = index
        self.progress.label = core.STEPS[index]


class MeasureLabels(_Results):
    """Re-measure a Labels layer (after splitting, merging or deleting particles) and export."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.labels = create_widget(annotation="napari.layers.Labels", label="labels")
        self.image = create_widget(annotation="napari.layers.Image", label="micrograph", options={"nullable": True})
        self.classifier = FileEdit(label="classifier", filter="*.pt",
                                   tooltip="Optional keep/discard network: RUN/classify/model.pt")
        self.measure_button = PushButton(text="Measure")
        self.out_dir = FileEdit(label="export to", mode="d")
        self.export_button = PushButton(text="Export particles.csv and summary")
        self.extend([self.labels, self.image, self.classifier, self.measure_button, self.out_dir,
                     self.export_button])
        self._finish_layout()
        self.measure_button.changed.connect(self.measure)
        self.export_button.changed.connect(self.export)

    def measure(self) -> core.Measured | None:
        layer, image = self.labels.value, self.image.value
        if layer is None:
            self.status.value = "pick a labels layer first"
            return None
        size = core.layer_pixel_size_nm(layer.metadata, layer.scale, getattr(layer, "units", None))
        if size is None and image is not None:
            size = core.layer_pixel_size_nm(image.metadata, image.scale, getattr(image, "units", None))
        name = image.name if image is not None else layer.name
        try:
            measured = core.measure_labels(name, layer.data, None if image is None else image.data, size,
                                           classifier=_path_or_none(self.classifier))
        except NanosegError as exc:
            self._error(exc)
            return None
        _restyle(layer, core.labels_layer_kwargs(measured, layer.name))
        self._show(measured, layer)
        return measured

    def export(self) -> dict[str, Any] | None:
        out = _path_or_none(self.out_dir)
        if out is None:
            self.status.value = "pick a folder to export to first"
            return None
        measured = self.measure()
        if measured is None:
            return None
        image = self.image.value
        source = ((image.metadata.get("nanoseg") or {}).get("pixel_size_source", "layer scale")
                  if image is not None else "layer scale")
        summary = core.export(measured, out, None if image is None else image.data, source=source)
        self.status.value += f"; wrote {out}"
        return summary
