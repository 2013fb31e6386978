"""The demo's report in a real browser (headless Chromium from the distribution, driven by Selenium through the
system chromedriver; no browser download): every image loads, clicking a word changes the shown heatmaps and the
linguistic explanation, the console has no errors; hostile text in the data (markup, script) is shown, never run.
Screenshots go to RUN_DIR/screenshots/ (look at them).

The report is the one in ``$CAPXAI_REPORT_RUN`` (``make demo-check``, which CI runs, points it at the ``make demo
QUICK=1`` run), else the tiny demo's of the test session. End to end (marked ``e2e``): not in ``make test``."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
CHROMIUM = ("chromium", "chromium-browser")


def _find(names):
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def run_dir(request):
    chosen = os.environ.get("CAPXAI_REPORT_RUN")
    if chosen:
        path = Path(chosen)
        assert (path / "report.html").is_file(), f"CAPXAI_REPORT_RUN={chosen} holds no report.html"
        return path
    return request.getfixturevalue("tiny_demo")[0]


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is installed by make test")
    chromium, driver = _find(CHROMIUM), _find(["chromedriver"])
    if not chromium or not driver:
        pytest.fail("the report's browser test needs Debian's chromium and chromium-driver; `make test` installs them "
                    "when it runs as root (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="capxai-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    session.set_page_load_timeout(60)
    yield session
    session.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _broken_images(browser):
    return browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);")


def _wait_for_images(browser):
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, 30).until(lambda b: b.execute_script(
        "return Array.from(document.images).every(i => i.complete);"))


def test_report_in_a_real_browser(browser, run_dir):
    from selenium.webdriver.common.by import By

    shots = run_dir / "screenshots"
    shots.mkdir(exist_ok=True)
    browser.get((run_dir / "report.html").resolve().as_uri())
    _wait_for_images(browser)
    assert browser.execute_script("return document.querySelectorAll('img').length") > 10
    assert _broken_images(browser) == []
    browser.save_screenshot(str(shots / "1-opened.png"))

    section = browser.find_elements(By.CSS_SELECTOR, "section.example")[0]
    browser.execute_script("arguments[0].scrollIntoView();", section)
    words = section.find_elements(By.CSS_SELECTOR, ".word")
    assert len(words) >= 2
    shown = [img.get_attribute("src") for img in section.find_elements(By.CSS_SELECTOR, "img.heatmap")]
    selected = next(i for i, w in enumerate(words) if "selected" in w.get_attribute("class"))
    other = (selected + 1) % len(words)
    linguistic_before = section.find_element(By.CSS_SELECTOR, ".linguistic").text
    words[other].click()
    _wait_for_images(browser)
    now = [img.get_attribute("src") for img in section.find_elements(By.CSS_SELECTOR, "img.heatmap")]
    assert len(now) == len(shown) > 0 and all(a != b for a, b in zip(now, shown))
    assert all(f"_{other:02d}.png" in src for src in now)
    assert "selected" in words[other].get_attribute("class")
    assert "selected" not in words[selected].get_attribute("class")
    assert section.find_element(By.CSS_SELECTOR, ".linguistic").text != linguistic_before
    expected = browser.execute_script("return JSON.parse(document.getElementById('report-data').textContent)"
                                      ".examples[arguments[0]].contrast_words[arguments[1]];",
                                      section.get_attribute("data-example"), other)
    assert section.find_element(By.CSS_SELECTOR, ".contrast-word").text == expected  # the third panel follows
    assert _broken_images(browser) == []
    browser.save_screenshot(str(shots / "2-after-click.png"))
    section.screenshot(str(shots / "3-example.png"))

    for name, heading in (("4-fine-tuning.png", "Captions and fine-tuning"),
                          ("5-measures.png", "Measuring the explanations")):
        browser.execute_script("Array.from(document.querySelectorAll('h2')).find(h => h.textContent === arguments[0])"
                               ".scrollIntoView();", heading)
        browser.save_screenshot(str(shots / name))

    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []


@pytest.fixture(scope="module")
def hostile_run(run_dir, tmp_path_factory):
    """The report of ``run_dir``'s inputs with hostile text in every string the page shows (test_report.HOSTILE)."""
    from helpers import hostile_report

    target = tmp_path_factory.mktemp("hostile") / "run"
    hostile_report(run_dir, target)
    return target


ELEMENTS_WITH_HANDLERS = ("return Array.from(document.querySelectorAll('*')).filter("
                          "e => Array.from(e.attributes).some(a => a.name.startsWith('on'))).map(e => e.outerHTML);")


def test_hostile_data_is_shown_as_text_and_never_runs(browser, hostile_run):
    """Words, image ids, category names, a captioner's name holding markup and script: shown literally, before and
    after clicking the words; nothing of it runs, no element of it exists, every picture still loads."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from helpers import HOSTILE, SHOWN

    browser.get_log("browser")  # what earlier pages logged
    browser.get((hostile_run / "report.html").resolve().as_uri())
    _wait_for_images(browser)
    assert browser.execute_script("return window.__pwned;") is None  # no hostile handler or script ran on load
    assert _broken_images(browser) == []  # the captioner's "#?%" is percent-encoded in the pictures' URLs
    section = next(s for s in browser.find_elements(By.CSS_SELECTOR, "section.example")
                   if s.find_elements(By.CSS_SELECTOR, ".word")[0].text == HOSTILE["word"])
    browser.execute_script("arguments[0].scrollIntoView();", section)
    words = section.find_elements(By.CSS_SELECTOR, ".word")
    assert [w.text for w in words[:3]] == [HOSTILE["word"], HOSTILE["breakout"], HOSTILE["comment"]]
    assert HOSTILE["word"] in section.find_element(By.CSS_SELECTOR, ".selected-word").text  # set by the script
    words[1].click()
    assert HOSTILE["breakout"] in section.find_element(By.CSS_SELECTOR, ".selected-word").text
    assert HOSTILE["word"] in section.find_element(By.CSS_SELECTOR, ".linguistic").text
    ActionChains(browser).move_to_element(section.find_element(By.CSS_SELECTOR, "h3 .note")).perform()
    shots = hostile_run / "screenshots"
    shots.mkdir(exist_ok=True)
    section.screenshot(str(shots / "hostile-example.png"))

    assert browser.execute_script("return window.__pwned;") is None  # nor on clicking and hovering
    shown = browser.execute_script("return document.body.innerText;")
    assert [name for name in SHOWN if HOSTILE[name] not in shown] == []
    assert browser.execute_script("return document.querySelectorAll('script').length;") == 2  # the page's own
    assert browser.execute_script("return Array.from(document.images).filter(i => i.src.endsWith('/x')).length;") == 0
    assert browser.execute_script("return document.querySelectorAll('svg').length;") == 0
    assert browser.execute_script(ELEMENTS_WITH_HANDLERS) == []
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    """``capxai explain --hf-model`` of a tiny Idefics3 / SmolVLM (image splitting on) over two images, every method,
    and ``capxai report`` of its folder."""
    import numpy as np
    from PIL import Image

    from capxai.cli import main
    from helpers import tiny_vlm_folder

    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("vlm-report")
    folder = tiny_vlm_folder("idefics3-smolvlm", root / "model", split=True)
    images = []
    for seed in range(2):
        images.append(root / f"image{seed}.png")
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(images[-1])
    out = root / "explained"
    assert main(["explain", "--hf-model", str(folder), "--images", *map(str, images), "--method", "all",
                 "--max-length", "4", "--out", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    return out


def test_a_vlms_explanations_in_a_real_browser(browser, vlm_run):
    """The page of a VLM's explanations: every picture loads, clicking a word changes every method's map, and the
    linguistic line shows the prompt's tokens (in italics) before the caption's words."""
    from selenium.webdriver.common.by import By

    browser.get_log("browser")
    browser.get((vlm_run / "report.html").resolve().as_uri())
    _wait_for_images(browser)
    assert _broken_images(browser) == []
    section = browser.find_elements(By.CSS_SELECTOR, "section.example")[1]
    browser.execute_script("arguments[0].scrollIntoView();", section)
    shown = [img.get_attribute("src") for img in section.find_elements(By.CSS_SELECTOR, "img.heatmap")]
    assert len(shown) == 6  # LRP, Grad-CAM, Gradient x Input, attention, Integrated Gradients, occlusion
    section.find_elements(By.CSS_SELECTOR, ".word")[2].click()
    _wait_for_images(browser)
    now = [img.get_attribute("src") for img in section.find_elements(By.CSS_SELECTOR, "img.heatmap")]
    assert all(a != b and "_02.png" in b for a, b in zip(shown, now))
    prompt = [span.text for span in section.find_elements(By.CSS_SELECTOR, ".linguistic span.prompt")]
    assert prompt[:2] == ["User", ":"] and "Describe" in prompt
    shots = vlm_run / "screenshots"
    shots.mkdir(exist_ok=True)
    section.screenshot(str(shots / "vlm-example.png"))
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
