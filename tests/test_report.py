"""The HTML report renders: parse it and check its images, tables and statements."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from nanoseg.classify import counting_rule
from nanoseg.config import build_config
from nanoseg.measure import join_decisions, write_results
from nanoseg.measure.report import counting_rule_text, html_table, render_report
from nanoseg.particles import measure_images


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.rows_per_table: list[int] = []
        self.text: list[str] = []
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "table":
            self.tables += 1
            self.rows_per_table.append(0)
        elif tag == "tr" and self.rows_per_table:
            self.rows_per_table[-1] += 1

    def handle_data(self, data):
        self.text.append(data)


def _parse(text: str) -> _Collector:
    parser = _Collector()
    parser.feed(text)
    parser.close()
    return parser


def _results(tmp_path, pixel_size_nm=5.0, n_images=2):
    rng = np.random.default_rng(0)
    items, images, labels = [], {}, {}
    for k in range(n_images):
        lab = np.zeros((96, 128), np.int32)
        for i in range(12):
            r, c = 8 + 26 * (i // 4), 8 + 30 * (i % 4)
            h, w = rng.integers(6, 18, size=2)
            lab[r:r + h, c:c + w] = i + 1
        img = np.where(lab > 0, 0.7, 0.1).astype(np.float32)
        items.append((f"img{k}", lab, img, pixel_size_nm))
        images[f"img{k}"], labels[f"img{k}"] = img, lab
    particles = measure_images(items)
    decisions = particles[["image", "label"]].copy()
    decisions["score"] = np.linspace(0, 1, len(decisions))
    decisions["kept"] = decisions["score"] > 0.3
    decisions["reason"] = np.where(decisions["kept"], "", "score_below_threshold")
    particles = join_decisions(particles, decisions)
    calibration = {"threshold": 0.3, "youden_j": 0.71, "n_particles": 310, "n_images": 20, "held_out": True}
    rule = counting_rule(build_config().classify.model_copy(update={"score_threshold": 0.3}),
                         classifier_model="runs/x/classify/model.pt", calibration=calibration)
    summary = write_results(particles, tmp_path, micrographs=images, labels=labels,
                            pixel_size_source="vendor TIFF metadata", size_prior={"masks.size_prior": "outlines"},
                            compare=("manual.csv", particles.assign(min_feret_nm=particles["min_feret_nm"] * 1.1)),
                            report_rows=10, counting_rule=rule, warnings=["the <classifier> fell back"])
    return summary, particles


def test_report_has_images_tables_and_statements(tmp_path):
    summary, particles = _results(tmp_path)
    html_text = (tmp_path / "report.html").read_text()
    parsed = _parse(html_text)
    # 4 histograms + the comparison plot + 2 overlays, all embedded
    assert len(parsed.images) == 7
    assert all(src.startswith("data:image/") for src in parsed.images)
    payload = parsed.images[0].split(",", 1)[1]
    assert base64.b64decode(payload)[:8] == b"\x89PNG\r\n\x1a\n"
    assert parsed.images[-1].startswith("data:image/jpeg")  # overlays as JPEG
    # overview, summary, discard reasons, comparison, particles
    assert parsed.tables == 5
    assert parsed.rows_per_table[-1] == 1 + 10  # header + report_rows particles
    assert parsed.rows_per_table[1] == 1 + 4  # header + ecd, min_feret, max_feret, area
    text = " ".join(parsed.text)
    assert summary["ec_definition"]["statement"] in text
    assert "5 nm" in text and "vendor TIFF metadata" in text
    assert "masks.size_prior = outlines" in text
    assert "Kolmogorov-Smirnov" in text
    assert "src=" not in html_text.replace("src='data:", "")  # nothing refers to outside files
    # the counting rule in words, the warnings (escaped) and the uncertainty of the summary
    assert counting_rule_text(summary["counting_rule"]) in text
    assert "excluded by the keep/discard classifier (runs/x/classify/model.pt)" in text
    assert "above 0.3 (calibrated on 310 particles of 20 held-out fake pairs, Youden's J 0.710)" in text
    assert "the <classifier> fell back" in text and "&lt;classifier&gt;" in html_text
    assert "median 95 % CI" in text and "bootstrap over images" in text
    lo, hi = summary["descriptors"]["ecd"]["median_ci95"]
    assert f"{lo:.4g} \u2013 {hi:.4g}" in text
    assert "fewer than 50" in text  # 17 kept particles: the caution is shown


def test_counting_rule_text_states_each_choice():
    cfg = build_config().classify.model_copy(update={"score_threshold": 0.5})
    where = {"pixel_size_nm": 7.34, "pixel_size_source": "vendor TIFF metadata"}
    network = counting_rule_text({**counting_rule(cfg, classifier_model="m.pt"), **where})
    assert "touching the image border or the info bar were excluded" in network
    assert "Partly covered particles were excluded by the keep/discard classifier (m.pt)" in network
    assert "keep score was above 0.5 (set in the configuration)" in network
    assert "'li' threshold" in network and "smaller than" not in network
    assert "pixel size of 7.34 nm, from vendor TIFF metadata" in network
    rules = counting_rule_text({**counting_rule(cfg.model_copy(update={"method": "rules", "exclude_border": False,
                                                                      "min_area_px": 40})),
                                "pixel_size_nm": None, "pixel_size_source": "unknown: no pixel size"})
    assert "touching the image border were counted" in rules
    assert "Partly covered particles were not excluded" in rules
    assert "smaller than 40 px" in rules
    assert "rules only" in rules and "sizes are in px" in rules
    none = counting_rule_text({**counting_rule(cfg.model_copy(update={"method": "none"})), **where})
    assert "every segmented particle was counted" in none


def test_report_without_pixel_size_says_so(tmp_path):
    from nanoseg.particles import measure_images

    lab = np.zeros((40, 40), np.int32)
    lab[5:15, 5:15] = 1
    lab[20:30, 20:28] = 2
    particles = join_decisions(measure_images([("x", lab, None, None)]), None)
    summary = write_results(particles, tmp_path, pixel_size_source="unknown")
    assert summary["descriptors"]["min_feret"]["column"] == "min_feret_px"
    text = " ".join(_parse((tmp_path / "report.html").read_text()).text)
    assert "pixel size is unknown" in text
    assert "unknown (sizes in px)" in text


def test_report_escapes_text():
    table = html_table(["name"], [["<script>alert(1)</script>"]])
    assert "<script>" not in table and "&lt;script&gt;" in table
    html_text = render_report({"n_images": 0, "ec_definition": {"statement": "a < b"}}, pd.DataFrame({"image": []}))
    assert "a &lt; b" in html_text
    assert _parse(html_text).tables >= 2


# --------------------------------------------------------------------------- in a real browser

_PAGE_STATE = """
const doc = document.documentElement;
const box = e => e.getBoundingClientRect();
return {
  images: [...document.images].map(i => ({loaded: i.complete && i.naturalWidth > 0, width: box(i).width,
                                          right: box(i).right})),
  tables: [...document.querySelectorAll('table')].map(t => ({width: box(t).width, height: box(t).height,
                                                             visible: t.checkVisibility()})),
  page_width: doc.scrollWidth, window_width: doc.clientWidth,
};
"""


def _chromium():
    """A headless Chromium driven by Selenium, or a skip when Chromium is not installed."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("Chromium and ChromeDriver not installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # The flags keep Chromium off the network (closed here) and out of a sandbox a container lacks.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def test_report_shows_every_image_and_table_in_a_browser_without_overflow(tmp_path):
    _results(tmp_path)
    browser = _chromium()
    try:
        for width in (1280, 800):  # a laptop, and a narrow window
            browser.set_window_size(width, 900)
            browser.get((tmp_path / "report.html").as_uri())
            state = browser.execute_script(_PAGE_STATE)
            assert len(state["images"]) == 7 and len(state["tables"]) == 5
            assert all(img["loaded"] and img["width"] > 100 for img in state["images"]), state["images"]
            assert all(t["visible"] and t["width"] > 0 and t["height"] > 0 for t in state["tables"])
            # Nothing wider than the window: no sideways scrolling of the page itself.
            assert state["page_width"] <= state["window_width"], (width, state["page_width"])
            assert all(img["right"] <= state["window_width"] + 1 for img in state["images"])
        shot = tmp_path / "report.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    from PIL import Image

    with Image.open(shot) as im:
        assert im.width > 700 and np.asarray(im.convert("L")).std() > 10  # something was drawn
