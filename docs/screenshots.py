"""Make the README's screenshots from the project's own demo data: the napari widget and the report.

    python docs/screenshots.py [--demo-dir demo-run] [--out docs/img]

Runs ``nanoseg demo`` first when ``DEMO_DIR/run/measure/report.html`` is missing (minutes on 2
CPU cores). The napari screenshot opens a demo micrograph with the plugin's reader, runs
"Segment and measure" with the demo run's models and grabs the whole window; it needs the
``napari`` extra and an X display (started with Xvfb through PyVirtualDisplay when there is
none). The report screenshot is the top of ``report.html`` in headless Chromium (Debian
packages chromium and chromium-driver). The TiO2 data is never shown: its licence does not
allow copies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure_demo(demo_dir: Path) -> Path:
    run = demo_dir / "run"
    if not (run / "measure" / "report.html").is_file():
        subprocess.run([sys.executable, "-m", "nanoseg", "demo", "--out", str(demo_dir)], check=True)
    return run


def napari_screenshot(run: Path, data: Path, out: Path) -> Path:
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        Display(visible=False, size=(1600, 1000)).start()
    import napari
    from qtpy.QtCore import QEventLoop

    from nanoseg.napari_plugin._widget import SegmentAndMeasure

    micrograph = sorted((data / "images").glob("*.tif"))[0]
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    [image] = viewer.open(str(micrograph), plugin="nanoseg")
    widget = SegmentAndMeasure(viewer)
    viewer.window.add_dock_widget(widget, name="Segment and measure")
    widget.image.value = image
    widget.model.value = run / "adapt" / "model.pt"
    widget.classifier.value = run / "classify" / "model.pt"
    loop = QEventLoop()
    worker = widget.start()
    worker.finished.connect(loop.quit)
    loop.exec_()
    if widget.measured is None:
        raise SystemExit(f"error: the widget did not finish: {widget.status.value}")
    viewer.reset_view()
    path = out / "napari_widget.png"
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    viewer.close()
    return path


def report_screenshot(run: Path, out: Path) -> Path:
    from selenium import webdriver

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        raise SystemExit("error: Chromium not found (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1400", "--hide-scrollbars"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        chrome.get((run / "measure" / "report.html").resolve().as_uri())
        path = out / "report.png"
        chrome.save_screenshot(str(path))
    finally:
        chrome.quit()
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=ROOT / "demo-run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run = ensure_demo(args.demo_dir)
    for path in (report_screenshot(run, args.out), napari_screenshot(run, args.demo_dir / "data", args.out)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
