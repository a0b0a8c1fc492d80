"""The workbench in a real browser (Debian's headless Chromium through chromedriver; nothing
downloaded): an officer signs in, opens the queue and a held parcel, records "seized" with
a double click, and the exam result is on the exam-results topic once, the shipper's state
counts the violation, and a later parcel of the shipper scores higher than the same parcel
before the outcome. Also: an analyst sees no consignee name, a form without its CSRF token
is refused, and ten wrong passwords are throttled."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import orjson
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from parcel_stream.adapters.kafka_io import make_producer, produce_parcels, read_all
from parcel_stream.adapters.redis_store import RedisReputationStore
from parcel_stream.adapters.workbench.service import PORT_FILE, open_store
from parcel_stream.generate import HUBS, FeedConfig, generate
from parcel_stream.model import Decision, ExamResult, Hold
from parcel_stream.reputation import ShipperState
from parcel_stream.settings import Settings
from tests.integration.conftest import run_worker

T = TypeVar("T")
PASSWORD = "correct horse battery"


def wait(procs: dict[str, tuple[subprocess.Popen[bytes], Path]], ready: Callable[[], T | None],
         what: str, timeout_s: float = 60) -> T:  # fmt: skip
    """Poll ``ready``; fail at once, with the log's tail, if a process we need has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise AssertionError(f"the {name} exited ({proc.returncode}) waiting for "
                                     f"{what}:\n{tail}")  # fmt: skip
        got = ready()
        if got is not None and got is not False:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.2)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download anything
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):  # fmt: skip
        opts.add_argument(arg)
    if not Path("/usr/bin/chromedriver").exists():
        pytest.fail("chromedriver is missing: apt-get install -y chromium chromium-driver "
                    "(make test-deps)")  # fmt: skip
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def reload(driver: webdriver.Chrome) -> bool:
    """Reload the page; False (not ready yet) for ``wait``."""
    driver.refresh()
    return False


def text_of(driver: webdriver.Chrome, element_id: str) -> str | None:
    """The element's text on the page now; None while the page is being replaced."""
    try:
        return str(driver.find_element(By.ID, element_id).text)
    except WebDriverException:  # no such element, a stale one, or a node being replaced
        return None


def shows(driver: webdriver.Chrome, element_id: str, want: str) -> None:
    """Wait for the page (a form's click does not wait for the next one) to show ``want``."""
    WebDriverWait(driver, 30).until(lambda d: want in (text_of(d, element_id) or ""))


def sign_in(driver: webdriver.Chrome, url: str, user: str, password: str) -> None:
    driver.get(url + "/sign-in")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in").click()
    # the click does not wait for the next page: wait for it (signed in, or an error)
    WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "header .who, #error")
    )


def sign_out(driver: webdriver.Chrome) -> None:
    driver.find_element(By.CSS_SELECTOR, "header form button").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "username"))


def decisions_of(settings: Settings, ids: set[str], procs: Any) -> dict[str, Decision]:
    got: dict[str, Decision] = {}

    def ready() -> dict[str, Decision] | None:
        seen = read_all(settings.kafka_bootstrap, [settings.topic_decisions], lambda g: True, 2)
        for _k, v in seen[settings.topic_decisions]:
            for line in v.split(b"\n"):
                d = msgspec.json.decode(line, type=Decision)
                if d.parcel_id in ids:
                    got[d.parcel_id] = d
        return got if set(got) == ids else None

    return wait(procs, ready, f"the decisions of {sorted(ids)}", 90)


def test_an_officer_records_seized_and_the_targeting_learns(
    settings: Settings, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    s = settings.replace(risk_model="shadow", workbench_db=f"sqlite:///{tmp_path / 'wb.db'}",
                         workbench_port=0)  # fmt: skip
    _store, users = open_store(s)
    users.add("ann", PASSWORD, "officer", list(HUBS))
    users.add("ana", PASSWORD, "analyst", [])
    state = tmp_path / "state"
    state.mkdir()
    feed = [(d["shipper"]["id"].encode(), orjson.dumps(d))
            for d, _ in generate(FeedConfig(parcels=800, seed=11))]  # fmt: skip
    with run_worker(s, state) as worker:
        wb_log = tmp_path / "workbench.log"
        with wb_log.open("wb") as log:
            wb = subprocess.Popen(
                [sys.executable, "-m", "parcel_stream.cli", "workbench", "serve", "--state-dir",
                 str(tmp_path)], env={**os.environ, **s.as_env()}, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        procs = {"worker": (worker, state / "worker.log"), "workbench": (wb, wb_log)}
        try:
            run_scenario(s, tmp_path, browser, feed, procs)
        finally:
            wb.terminate()
            wb.wait(timeout=20)


def run_scenario(s: Settings, tmp: Path, driver: webdriver.Chrome, feed: Any, procs: Any) -> None:
    port = wait(procs, lambda: (tmp / PORT_FILE).exists() and (tmp / PORT_FILE).read_text(),
                "the workbench's port")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    producer = make_producer(s.kafka_bootstrap)
    produce_parcels(producer, s.topic_manifests, feed, batch_size=200)

    def holds() -> list[Hold] | None:
        got = read_all(s.kafka_bootstrap, [s.topic_holds], lambda g: len(g[s.topic_holds]) >= 3,
                       2)[s.topic_holds]  # fmt: skip
        return [msgspec.json.decode(v, type=Hold) for _k, v in got] if len(got) >= 3 else None

    held = {h.parcel_id: h for h in wait(procs, holds, "three holds", 120)}

    # the officer signs in and opens the queue: the riskiest held parcel comes first
    sign_in(driver, url, "ann", PASSWORD)

    def first_row() -> str | None:
        try:
            links = driver.find_elements(By.CSS_SELECTOR, "#queue a.parcel-link")
            if len(links) >= 3 and links[0].text in held:
                return str(links[0].text)
        except WebDriverException:  # the page was being replaced
            pass
        driver.refresh()
        return None

    target = held[wait(procs, first_row, "held parcels in the queue")]
    assert target.manifest is not None
    # the same parcel again under a new id and address, scored before the outcome
    producer.send(s.topic_manifests, key=target.shipper_id.encode(),
                  value=clone(target, "X-BEFORE"))  # fmt: skip
    producer.flush()
    p_before = decisions_of(s, {"X-BEFORE"}, procs)["X-BEFORE"]
    driver.find_element(By.LINK_TEXT, target.parcel_id).click()
    shows(driver, "consignee", target.manifest.consignee.name)  # after the click's page load
    assert driver.find_elements(By.CSS_SELECTOR, "#reasons tr")
    driver.find_element(By.ID, "claim").click()
    shows(driver, "assignee", "ann")
    driver.find_element(By.ID, "outcome-seized").click()
    driver.find_element(By.ID, "finding").send_keys("counterfeit")
    driver.find_element(By.ID, "recovered_usd").clear()
    driver.find_element(By.ID, "recovered_usd").send_keys("25")
    driver.find_element(By.ID, "notes").send_keys("fake branded watches")
    ActionChains(driver).double_click(driver.find_element(By.ID, "record")).perform()
    wait(procs, lambda: "closed" in (text_of(driver, "status") or "") or reload(driver),
         "the case closed (its exam result sent)")  # fmt: skip

    # once on the exam-results topic, with a stable exam id
    exams = read_all(s.kafka_bootstrap, [s.topic_exam_results], lambda g: False, 3)
    mine = [msgspec.json.decode(v, type=ExamResult) for _k, v in exams[s.topic_exam_results]]
    assert [(e.exam_id, e.outcome, e.finding, e.recovered_usd) for e in mine] == [
        (f"{target.parcel_id}/0", "seized", "counterfeit", 25.0)]  # fmt: skip

    # the shipper's state counts it, and a later parcel of the shipper scores higher
    def learned() -> bool:
        async def read() -> ShipperState | None:
            store = RedisReputationStore.from_settings(s)
            try:
                return await store.shipper(target.shipper_id)
            finally:
                await store.close()

        st = asyncio.run(read())
        return st is not None and st.exams >= 1 and st.violations >= 1

    wait(procs, learned, "the shipper's state to count the seized parcel", 60)
    producer.send(s.topic_manifests, key=target.shipper_id.encode(),
                  value=clone(target, "X-AFTER"))  # fmt: skip
    producer.flush()
    after = decisions_of(s, {"X-AFTER"}, procs)["X-AFTER"]
    assert after.learner_version > p_before.learner_version
    assert p_before.probability is not None and after.probability is not None
    assert after.probability > p_before.probability, (p_before, after)
    producer.close()

    # a form posted without its CSRF token is refused
    other = next(h for h in held.values() if h.parcel_id != target.parcel_id)
    driver.get(f"{url}/parcels/{other.parcel_id}")
    driver.execute_script("document.querySelector('form[action$=\"/claim\"] "
                          "input[name=csrf]').remove()")  # fmt: skip
    driver.find_element(By.ID, "claim").click()
    shows(driver, "message", "did not come from the workbench")
    driver.get(f"{url}/parcels/{other.parcel_id}")
    assert driver.find_element(By.ID, "status").text == "new"

    # an analyst reads the parcel without personal data
    sign_out(driver)
    sign_in(driver, url, "ana", PASSWORD)
    driver.get(f"{url}/parcels/{target.parcel_id}")
    assert driver.find_elements(By.ID, "consignee-hidden")
    assert target.manifest.consignee.name not in driver.page_source
    assert not driver.find_elements(By.ID, "record")
    sign_out(driver)

    # ten wrong passwords: throttled, and then the right one is refused too
    messages = []
    for _ in range(10):
        sign_in(driver, url, "ann", "not the password")
        messages.append(driver.find_element(By.ID, "error").text)
    assert messages[0] == "wrong user name or password"
    assert messages[-1].startswith("too many failed sign-ins")
    sign_in(driver, url, "ann", PASSWORD)
    assert driver.find_element(By.ID, "error").text.startswith("too many failed sign-ins")


def clone(hold: Hold, parcel_id: str) -> bytes:
    """The held parcel's manifest under a new parcel id and consignee address."""
    doc = msgspec.to_builtins(hold.manifest)
    doc["parcel_id"] = parcel_id
    doc["consignee"]["address"]["lines"] = [f"{parcel_id} Test Street"]
    return orjson.dumps(doc)
