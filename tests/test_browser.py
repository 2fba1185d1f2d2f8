"""The report opens in a real headless browser with no JS errors and every plot drawn.

Uses Debian's chromium and chromium-driver (`.ci/run` installs them); nothing downloads a browser.
"""

import os
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


def test_report_loads_without_js_errors_and_draws_every_plot(browser, tmp_path):
    trials = _trials()
    trials["recipe"] = None
    trials.to_parquet(tmp_path / "trials.parquet")
    _epochs(trials).to_parquet(tmp_path / "epochs.parquet")
    finalists, predictions = _finalists()
    finalists.to_parquet(tmp_path / "finalists.parquet")
    predictions.to_parquet(tmp_path / "test_predictions.parquet")
    page = report.build(tmp_path, "browser")
    expected = page.read_text().count("Plotly.newPlot")
    assert expected == 5  # the answer at a glance, history, curves, cost, confusion
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


BATCH_SIZES = {str(b): {"batch_size": (b,)} for b in (16, 32, 64, 128, 256)}


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
    # answer, lr scaling, history, curves, cost, parallel coordinates x5, confusion (+ the grid
    # of misclassified digits when the winner got any wrong)
    expected = text.count("Plotly.newPlot")
    assert expected >= 11
    _check_every_plot_drawn(browser, page, expected)
