"""The report opens in a real headless browser with no JS errors and every plot drawn.

Uses Debian's chromium and chromium-driver (`.ci/run` installs them); nothing downloads a browser.
"""

import math
import os
import re
import shutil

import optuna
import pytest
import torch
from rich.console import Console
from test_report import _epochs, _finalists, _trials

from bench import finalists, report, study
from bench.space import Space

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    binary, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and chromedriver):
        message = "needs Debian's chromium and chromium-driver (apt-get install ...)"
        if os.environ.get("CI"):
            pytest.fail(f"CI {message}; .ci/run installs them")
        pytest.skip(message)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1300,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver),
                              options=options)
    yield driver
    driver.quit()


def _finalized_report(folder, name):
    """The report of test_report's built store, finalists included."""
    trials = _trials()
    trials["recipe"] = None
    trials.to_parquet(folder / "trials.parquet")
    _epochs(trials).to_parquet(folder / "epochs.parquet")
    finalists, predictions = _finalists()
    finalists.to_parquet(folder / "finalists.parquet")
    predictions.to_parquet(folder / "test_predictions.parquet")
    return report.build(folder, name)


def test_report_loads_without_js_errors_and_draws_every_plot(browser, tmp_path):
    page = _finalized_report(tmp_path, "browser")
    expected = page.read_text().count("Plotly.newPlot")
    # the answer at a glance, tuning curves, history, learning curves, cost, confusion
    assert expected == 6
    _check_every_plot_drawn(browser, page, expected)
    assert browser.title == "mnist-bench · browser"


def _check_every_plot_drawn(browser, page, expected: int) -> None:
    browser.get(page.as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg")) >= expected)
    plots = browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    assert len(plots) == expected
    for plot in plots:  # drawn: an SVG with at least one trace layer holding marks
        assert plot.find_elements(By.CSS_SELECTOR, ".main-svg")
        marks = ".trace, .hm, image, path.point, .parcoords .y-axis"  # parcoords: axes + canvas
        assert plot.find_elements(By.CSS_SELECTOR, marks), plot.get_attribute("innerHTML")[:300]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    _check_ticks_and_legends(browser)


# Each plot's axes as drawn: plotly's full layout and the tick labels in the SVG.
AXES_JS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const lay = gd._fullLayout;
  const axes = Object.keys(lay).filter(k => /^[xy]axis\\d*$/.test(k)).map(k => ({
    name: k, type: lay[k].type, title: lay[k].title && lay[k].title.text,
    ticks: Array.from(gd.querySelectorAll('g.' + k.replace('axis', '') + 'tick > text'))
      .map(t => t.textContent)}));
  const bar = gd.querySelector('.legend .scrollbar');
  return {title: lay.title && lay.title.text, axes: axes,
          scrollbar: bar ? Number(bar.getAttribute('height')) : 0,
          parcoords: Array.from(gd.querySelectorAll('.parcoords .y-axis')).map(a => ({
            ticks: Array.from(a.querySelectorAll('.tick text')).map(t => t.textContent)}))};
});
"""
NUMBER = re.compile(r"([\d.]+(?:e-?\d+)?)(k|M)?( s|%)?")


def _major(text: str) -> bool:
    """A log axis's label: 1, 2 or 5 times a power of ten, in the axis's unit."""
    m = NUMBER.fullmatch(text)
    if not m:
        return False
    v = float(m[1]) * {"k": 1e3, "M": 1e6, None: 1}[m[2]]
    return round(v / 10 ** math.floor(math.log10(v) + 1e-9), 6) in (1, 2, 5)


def _check_ticks_and_legends(browser) -> list[dict]:
    """Read from the DOM, as a reader sees them: log axes label major ticks only (an axis of
    the study's own batch sizes labels those), trial numbers and epochs whole numbers, the
    confusion matrix all ten digits; no legend scrolls."""
    plots = browser.execute_script(AXES_JS)
    for plot in plots:
        assert plot["scrollbar"] == 0, plot["title"]  # the legend fits its figure
        for axis in plot["axes"]:
            if axis["type"] == "log" and "log scale" in (axis["title"] or ""):  # not a
                assert all(_major(t) for t in axis["ticks"]), (plot["title"], axis)  # bs axis
                assert len(axis["ticks"]) >= 2, (plot["title"], axis)
            if axis["title"] in ("trial number", "epoch"):
                assert axis["ticks"] and all(t.isdigit() for t in axis["ticks"]), axis
            if axis["title"] in ("predicted", "true"):
                assert axis["ticks"] == [str(d) for d in range(10)], axis
            if axis["title"] and "error" in axis["title"]:
                assert all(t.endswith("%") for t in axis["ticks"]), axis
        if plot["parcoords"]:  # the last axis: validation error, log, in percent
            assert plot["parcoords"][-1]["ticks"], plot["title"]
            assert all(t.endswith("%") and _major(t) for t in plot["parcoords"][-1]["ticks"])
    return plots


def test_the_glance_figure_as_a_reader_sees_it(browser, tmp_path):
    """A screenshot of the answer at a glance: validation circles and test diamonds both drawn
    (in their colours), y labels in percent at major ticks only, families on the x axis."""
    image = pytest.importorskip("PIL.Image")
    page = _finalized_report(tmp_path, "glance")
    _check_every_plot_drawn(browser, page, 6)
    glance = browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")[0]
    browser.execute_script("arguments[0].scrollIntoView();", glance)
    shot = tmp_path / "glance.png"
    shot.write_bytes(glance.screenshot_as_png)
    pixels = image.open(shot).convert("RGB")
    assert pixels.width > 500 and pixels.height > 300
    colours = {c for _, c in pixels.getcolors(pixels.width * pixels.height)}

    def near(rgb: str) -> bool:
        want = tuple(int(rgb[i:i + 2], 16) for i in (1, 3, 5))
        return any(sum(abs(a - b) for a, b in zip(c, want, strict=True)) < 30 for c in colours)

    assert near(report.PALETTE[0]) and near(report.PALETTE[1])  # validation and test marks
    axes = {a["name"]: a for a in browser.execute_script(AXES_JS)[0]["axes"]}
    assert axes["xaxis"]["ticks"] == ["mlp", "cnn"]
    assert axes["yaxis"]["ticks"] and all(_major(t) and t.endswith("%")
                                          for t in axes["yaxis"]["ticks"])


BATCH_SIZES = {str(b): {"batch_size": (b,)} for b in (16, 32, 64, 128, 256)}


@pytest.mark.slow  # seconds a run: `make test-full` (keeps `make test` under 5 minutes)
def test_a_five_family_report_draws_every_figure(browser, tiny_mnist, tmp_path):
    """A real five-family study (batch sizes, so the numeric axis and the lr figure), finalized."""
    definition = study.Study(
        question="five batch sizes", families=BATCH_SIZES, val_size=200,
        space=Space(archs=("mlp",), batch_size=(16, 32, 64, 128, 256), lr=(1e-3, 1e-1),
                    epochs=(1, 1), optimizers=("sgd",), schedules=("constant",),
                    arch_ranges={"mlp": {"depth": (1, 1), "width": (16, 32)}}),
        sampler=lambda seed: optuna.samplers.RandomSampler(seed=seed),
        pruner=lambda max_epochs: optuna.pruners.NopPruner())
    cfg = study.RunConfig(name="five", trials=15, timeout=None, device="cpu", seed=0,
                          smoke=False, results_dir=tmp_path)
    out = study.run(definition, cfg, Console(quiet=True))
    finalists.finalize(definition, out, torch.device("cpu"), k=1, seeds=2, refresh=False,
                       console=Console(quiet=True))
    page = report.build(out, "five")
    text = page.read_text()
    assert "The answer: error by batch size" in text and "Best learning rate against" in text
    # answer, lr scaling, tuning curves, history, curves, cost, parallel coordinates x5,
    # confusion (+ the grid of misclassified digits when the winner got any wrong)
    expected = text.count("Plotly.newPlot")
    assert expected >= 12
    _check_every_plot_drawn(browser, page, expected)


def test_a_replicated_qmc_smoke_study_draws_its_tuning_curves_and_verdict(browser, tiny_mnist,
                                                                         tmp_path):
    """Three replicates searched by quasi-random (i.i.d.) trials: the report draws the tuning
    curves over replicates, the expected best after n trials with its band, and the family
    verdict table across replicates."""
    definition = study.Study(
        question="replicated", families={"mlp": {"archs": ("mlp",)}, "cnn": {"archs": ("cnn",)}},
        val_size=200, space=Space(batch_size=(64,), lr=(1e-3, 1e-2), epochs=(1, 1),
                                  optimizers=("adam",), schedules=("constant",),
                                  arch_ranges={"mlp": {"depth": (1, 1), "width": (16, 32)},
                                               "cnn": {"blocks": (1, 1), "channels": (4, 4),
                                                       "convs": (1, 1), "hidden": (16, 16)}}),
        pruner=lambda max_epochs: optuna.pruners.NopPruner())
    cfg = study.RunConfig(name="rep", trials=6, timeout=None, device="cpu", seed=0,
                          smoke=False, results_dir=tmp_path, replicates=3, sampler="qmc")
    out = study.run(definition, cfg, Console(quiet=True))
    finalists.finalize(definition, out, torch.device("cpu"), k=1, seeds=1, refresh=False,
                       console=Console(quiet=True))
    page = report.build(out, "rep")
    text = page.read_text()
    assert "Family verdict" in text and "Tuning curves" in text
    expected = text.count("Plotly.newPlot")
    _check_every_plot_drawn(browser, page, expected)
    titles = [p["title"] for p in browser.execute_script(AXES_JS)]
    tuning = [t for t in titles if t.startswith("Tuning curves")]
    best = [t for t in titles if t.startswith("Expected best after n")]
    assert len(tuning) == 1 and len(best) == 1, titles
    traces = browser.execute_script(
        "return Array.from(document.querySelectorAll('.js-plotly-plot')).filter(gd => "
        "gd._fullLayout.title.text.startsWith('Expected best')).map(gd => gd.data.map(d => "
        "d.name))[0]")
    assert traces == ["mlp: 80% band", "mlp: expected best", "cnn: 80% band",
                      "cnn: expected best"]
