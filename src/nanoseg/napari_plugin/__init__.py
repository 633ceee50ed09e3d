"""napari plugin: micrographs at their size in nm, segment and measure, re-measure edited labels.

``core`` holds what the plugin does, on arrays, without Qt (tested without a viewer); ``_reader``,
``_writer`` and ``_widget`` are the thin napari ends named in ``napari.yaml``. Install with
``pip install "nanoseg[napari]"``.
"""
