"""The playground page in a real browser: Debian's headless Chromium driven by Selenium.

Chromium and chromedriver are the system's (`.ci/install-system-deps`), named explicitly so
Selenium Manager never downloads anything. The browser can reach loopback only: host names
resolve to nothing and every other address goes to a proxy that is not there, and each test
checks from the browser's own network log that every request went to 127.0.0.1.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from app.core.families import get_family
from tests.support.deploy import (
    answers_ok,
    nginx_command,
    render_nginx_include,
    require_binary,
    running,
    start_child,
    write_nginx_main_config,
)
from tests.support.openai_client import FLAN, GPT
from tests.support.server import RunningServer, free_port, running_server

pytestmark = pytest.mark.slow

INSTRUCTION = "Tell me about the sea."
API_KEY = "playground-key-5e1f"
WAIT_S = 60
# Long enough to be stopped midway (the tiny GPT twin has room for 1024 tokens in all).
LONG = 900


# --- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = require_binary("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1100",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        # Loopback only: names resolve to nothing, other addresses go to a dead proxy.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(require_binary("chromedriver")), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Playground:
    """The page through its stable `data-testid` selectors."""

    def __init__(self, driver: WebDriver, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    def open(self) -> Playground:
        self.driver.get_log("performance")  # forget earlier tests' requests
        self.driver.get(f"{self.base_url}/playground")
        return self

    def by_testid(self, testid: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def all_by_testid(self, testid: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def wait_for_models(self, count: int) -> None:
        options = 'input[type="checkbox"]'
        wait_for(
            lambda: len(self.by_testid("models").find_elements(By.CSS_SELECTOR, options)) == count,
            f"{count} models in the chooser",
        )

    def choose(self, *models: str) -> None:
        for box in self.by_testid("models").find_elements(By.CSS_SELECTOR, "input"):
            if box.is_selected() != (box.get_attribute("value") in models):
                box.click()

    def set_field(self, testid: str, value: str) -> None:
        field = self.by_testid(testid)
        field.clear()
        field.send_keys(value)

    def greedy(self) -> None:
        self.driver.find_element(By.ID, "decoding-greedy").click()

    def ask(self, instruction: str = INSTRUCTION, max_new_tokens: int | None = None) -> None:
        self.set_field("instruction", instruction)
        if max_new_tokens is not None:
            self.set_field("max-new-tokens", str(max_new_tokens))
        self.by_testid("send").click()

    def answer(self, model: str) -> str:
        return self.by_testid(f"answer-{model}").text

    def status(self, model: str) -> str:
        return self.by_testid(f"status-{model}").text

    def error(self, model: str) -> str:
        return self.by_testid(f"error-{model}").text

    def stat(self, model: str, name: str) -> str:
        pane = self.by_testid(f"pane-{model}")
        return pane.find_element(By.CSS_SELECTOR, f'[data-stat="{name}"]').text

    def wait_for_first_tokens(self, model: str) -> None:
        wait_for(lambda: self.answer(model) or self.status(model) == "Error", "the first tokens")
        assert self.answer(model), self.error(model)

    def wait_until_finished(self, *models: str) -> None:
        ended = ("Done", "Error", "Stopped")
        wait_for(
            lambda: all(self.status(model).startswith(ended) for model in models),
            f"answers of {models}",
        )

    def requested_urls(self) -> list[str]:
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls


@pytest.fixture
def page(browser: WebDriver, playground_server: RunningServer) -> Playground:
    playground = Playground(browser, playground_server.base_url).open()
    playground.wait_for_models(2)
    return playground


def assert_only_loopback(urls: list[str], port: int) -> None:
    assert urls, "the browser logged no requests"
    for url in urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.port) == ("http", "127.0.0.1", port), url


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


# --- tests -------------------------------------------------------------------------------------


def test_page_loads_everything_from_its_own_server_only(
    page: Playground, playground_server: RunningServer
) -> None:
    port = urlsplit(playground_server.base_url).port
    examples = page.all_by_testid("example")
    assert examples
    assert "Barcelona" in examples[0].text
    assert page.by_testid("max-new-tokens").get_attribute("value") == "256"  # the LaMini card
    assert page.by_testid("repetition-penalty").get_attribute("value") == "1.5"
    urls = page.requested_urls()
    paths = {urlsplit(url).path for url in urls}
    assert {"/playground", "/playground/static/playground.js", "/v1/models"} <= paths
    assert_only_loopback(urls, port)
    severe = [e for e in page.driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


@pytest.mark.parametrize("url", ["http://example.com/", "http://203.0.113.7/"])
def test_the_browser_reaches_nothing_beyond_loopback(browser: WebDriver, url: str) -> None:
    """The blocking the other tests rely on: names and outside addresses both fail."""
    with pytest.raises(WebDriverException, match=r"net::ERR_(PROXY_CONNECTION_FAILED|NAME_NOT)"):
        browser.get(url)


def test_answer_grows_while_it_streams(page: Playground, playground_server: RunningServer) -> None:
    page.choose(GPT)
    page.greedy()
    page.ask(max_new_tokens=600)
    lengths = []
    while not page.status(GPT).startswith(("Done", "Error", "Stopped")):
        lengths.append(len(page.answer(GPT)))
        time.sleep(0.03)
    assert page.status(GPT).startswith("Done"), page.error(GPT)
    growing = sorted(set(length for length in lengths if length > 0))
    assert len(growing) >= 3, f"the answer did not grow in steps: {lengths}"
    assert lengths == sorted(lengths), "the answer only ever grows"
    assert page.stat(GPT, "tokens") == "600 tok"
    assert page.stat(GPT, "ttft").endswith(" ms")
    assert page.stat(GPT, "tps").endswith(" tok/s")
    assert_only_loopback(page.requested_urls(), urlsplit(playground_server.base_url).port)


def test_two_models_answer_side_by_side_with_their_model_input(
    page: Playground, playground_server: RunningServer, tmp_path: Path
) -> None:
    page.choose(GPT, FLAN)
    page.by_testid("show-input").click()
    page.ask(max_new_tokens=24)
    page.wait_until_finished(GPT, FLAN)
    panes = [page.by_testid(f"pane-{model}") for model in (GPT, FLAN)]
    for model in (GPT, FLAN):
        assert page.status(model).startswith("Done"), page.error(model)
        assert page.answer(model)
        assert page.stat(model, "tokens") == "24 tok"
        rendered = playground_server.post("/prompt", json={"model": model, "inputs": INSTRUCTION})
        assert page.stat(model, "prompt-tokens") == f"{rendered.json()['input_tokens']} tok"
        shown = page.by_testid(f"model-input-{model}").find_element(By.TAG_NAME, "pre")
        family = get_family(rendered.json()["family"])
        assert shown.get_attribute("textContent") == family.prompt_format.wrap(INSTRUCTION)
    left, right = (pane.rect for pane in panes)
    assert right["x"] >= left["x"] + left["width"], "the panes are side by side"
    assert abs(right["y"] - left["y"]) < 5
    screenshot = tmp_path / "two-models.png"
    assert page.driver.save_screenshot(str(screenshot))
    assert png_size(screenshot) == (1440, page.driver.execute_script("return innerHeight"))


UNLABELLED_CONTROLS = """
return [...document.querySelectorAll("input, textarea, select, button")]
  .filter((el) => !(el.labels?.length || el.getAttribute("aria-label") ||
                    (el.tagName === "BUTTON" && el.textContent.trim())))
  .map((el) => el.outerHTML);
"""


def test_every_control_is_labelled_and_the_keyboard_reaches_send(page: Playground) -> None:
    assert page.driver.execute_script(UNLABELLED_CONTROLS) == []
    page.by_testid("instruction").click()
    for _ in range(10):
        page.driver.switch_to.active_element.send_keys(Keys.TAB)
        if page.driver.switch_to.active_element.get_attribute("data-testid") == "send":
            break
    else:
        raise AssertionError("Tab from the instruction never reached the send button")


def test_at_phone_width_the_panes_stack_and_nothing_scrolls_sideways(page: Playground) -> None:
    page.driver.set_window_size(390, 844)
    try:
        page.choose(GPT, FLAN)
        width, viewport = page.driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert width <= viewport
        first, second = (page.by_testid(f"pane-{model}").rect for model in (GPT, FLAN))
        assert second["y"] >= first["y"] + first["height"], "one pane under the other"
        assert first["x"] + first["width"] <= viewport
        # The answers come before the parameters, right under the send button.
        assert first["y"] < page.by_testid("max-new-tokens").rect["y"]
    finally:
        page.driver.set_window_size(1440, 1100)


def test_stop_cancels_the_generation_on_the_server(
    page: Playground, playground_server: RunningServer
) -> None:
    server = playground_server
    cancelled = server.metric("lamini_request_cancelled_total", model=GPT)
    page.choose(GPT)
    page.greedy()
    page.ask(max_new_tokens=LONG)
    page.wait_for_first_tokens(GPT)
    assert server.metric("lamini_requests_in_flight", model=GPT) == 1
    page.by_testid("stop").click()
    wait_for(lambda: page.status(GPT) == "Stopped", "the pane to say it stopped")
    wait_for(
        lambda: server.metric("lamini_requests_in_flight", model=GPT) == 0, "the slot to be free"
    )
    assert server.metric("lamini_request_cancelled_total", model=GPT) == cancelled + 1
    assert page.by_testid("send").is_enabled()
    assert not page.by_testid("stop").is_enabled()


def test_escape_stops_and_ctrl_enter_sends(
    page: Playground, playground_server: RunningServer
) -> None:
    server = playground_server
    page.choose(GPT)
    page.greedy()
    page.set_field("max-new-tokens", str(LONG))
    page.set_field("instruction", INSTRUCTION)
    page.by_testid("instruction").send_keys(Keys.CONTROL, Keys.ENTER)
    page.wait_for_first_tokens(GPT)
    page.by_testid("instruction").send_keys(Keys.ESCAPE)
    wait_for(lambda: page.status(GPT) == "Stopped", "Escape to stop the answer")
    wait_for(lambda: server.metric("lamini_requests_in_flight", model=GPT) == 0, "a free slot")


def test_a_bad_parameter_shows_the_servers_message(page: Playground) -> None:
    page.choose(GPT)
    page.ask(max_new_tokens=100_000)
    page.wait_until_finished(GPT)
    assert page.status(GPT) == "Error"
    assert "(400)" in page.error(GPT)
    assert "`max_new_tokens` must be at most" in page.error(GPT)
    page.set_field("temperature", "7")
    page.ask(max_new_tokens=8)
    page.wait_until_finished(GPT)
    assert "temperature" in page.error(GPT)
    assert "2" in page.error(GPT)
    assert page.by_testid("send").is_enabled()


def test_the_playground_works_behind_the_nginx_load_balancer(
    browser: WebDriver, playground_server: RunningServer, tmp_path: Path
) -> None:
    replica = urlsplit(playground_server.base_url).netloc
    port = free_port()
    include = render_nginx_include([replica], port, tmp_path / "lamini.conf")
    config = write_nginx_main_config(tmp_path, include)
    nginx = start_child("nginx", nginx_command(tmp_path, config), tmp_path / "nginx.out")
    lb_url = f"http://127.0.0.1:{port}"
    with running(nginx, lambda: answers_ok(f"{lb_url}/health"), 30):
        page = Playground(browser, lb_url).open()
        page.wait_for_models(2)
        page.choose(GPT, FLAN)
        page.ask(max_new_tokens=16)
        page.wait_until_finished(GPT, FLAN)
        for model in (GPT, FLAN):
            assert page.status(model).startswith("Done"), page.error(model)
            assert page.stat(model, "tokens") == "16 tok"
        page.choose(GPT)
        page.greedy()
        page.ask(max_new_tokens=LONG)
        page.wait_for_first_tokens(GPT)
        page.by_testid("stop").click()
        wait_for(
            lambda: playground_server.metric("lamini_requests_in_flight", model=GPT) == 0,
            "nginx to pass the cancel on",
        )
        assert_only_loopback(page.requested_urls(), port)


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    with running_server([GPT], env={"LAMINI_API_KEYS": API_KEY}) as server:
        yield server


def test_with_api_keys_the_page_opens_and_the_key_stays_in_the_browser(
    browser: WebDriver, keyed_server: RunningServer
) -> None:
    for path in ("/playground", "/playground/static/playground.js"):
        assert keyed_server.get(path).status_code == 200, path
    for path in ("/families", "/v1/models"):
        assert keyed_server.get(path).status_code == 401, path
    assert keyed_server.post("/prompt", json={"inputs": "Hi"}).status_code == 401
    # The open static folder is no way around the key.
    escape = "/playground/static/%2e%2e/%2e%2e/v1/models"
    assert keyed_server.get(escape).status_code == 401
    page = Playground(browser, keyed_server.base_url).open()
    wait_for(lambda: page.by_testid("notice").is_displayed(), "the notice asking for a key")
    assert "API key" in page.by_testid("notice").text
    page.set_field("api-key", API_KEY)
    page.by_testid("use-key").click()
    page.wait_for_models(1)
    page.ask(max_new_tokens=8)
    page.wait_until_finished(GPT)
    assert page.status(GPT).startswith("Done"), page.error(GPT)
    storage_script = (
        "return [sessionStorage.getItem('lamini-serve.api-key'),"
        " localStorage.getItem('lamini-serve.api-key'), document.cookie]"
    )
    assert browser.execute_script(storage_script) == [API_KEY, None, ""]
    assert API_KEY not in browser.current_url
    page.open()  # a reload in the same tab keeps the key
    page.wait_for_models(1)
    browser.find_element(By.ID, "remember-key").click()
    page.by_testid("use-key").click()
    assert browser.execute_script(storage_script) == [None, API_KEY, ""]
    browser.execute_script("localStorage.clear()")


def test_errors_of_a_busy_or_vanished_server_are_shown_in_words(browser: WebDriver) -> None:
    """A full queue (429) and a server that went away, each in words, never a spinner."""
    slow_queue = ["--max-batch-wait-ms", "3000", "--batch-quiet-ms", "3000"]
    with running_server([GPT], args=[*slow_queue, "--max-queue-size", "1"]) as server:
        page = Playground(browser, server.base_url).open()
        page.wait_for_models(1)
        page.set_field("instruction", INSTRUCTION)
        queued = threading.Thread(target=lambda: server.post("/generate", json={"inputs": "Hi"}))
        queued.start()
        wait_for(lambda: server.metric("lamini_queue_size", model=GPT) == 1, "a full queue")
        page.by_testid("send").click()
        page.wait_until_finished(GPT)
        queued.join(30)
        assert "busy (its queue is full): retry in 1 s" in page.error(GPT)
        server.stop()
        page.by_testid("send").click()
        page.wait_until_finished(GPT)
        assert page.status(GPT) == "Error"
        assert "Cannot reach the server" in page.error(GPT)
        assert page.by_testid("send").is_enabled()
