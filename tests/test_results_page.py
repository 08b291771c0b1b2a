"""The results page (/polls/<poll_id>) in headless Chromium, as a visitor uses it: it shows the question and
the bars, votes anonymously, sees its vote counted, sees other people's votes arrive without a reload,
and shows an error answer (closed poll, 429) as a sentence. Driven by Selenium with Debian's chromedriver.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from pgvote.http import ApiClient
from pgvote.paths import PROJECT_ROOT

from helpers import Poll, PollFactory, fingerprint

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# PGVOTE_SCREENSHOT=docs/results-page.png pytest tests/test_results_page.py renews the docs' picture
SCREENSHOT = os.environ.get("PGVOTE_SCREENSHOT")
WAIT = 20.0


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not Path(CHROMEDRIVER).exists() or not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        pytest.skip("no chromium / chromedriver (scripts/install-deps installs Debian's chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,700"):
        options.add_argument(flag)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def bar_width(browser: webdriver.Chrome, option_id: str) -> float:
    row = browser.find_element(By.CSS_SELECTOR, f'[data-option-id="{option_id}"]')
    return float(row.find_element(By.CLASS_NAME, "bar").value_of_css_property("width").removesuffix("px"))


def votes_text(browser: webdriver.Chrome, option_id: str) -> str:
    row = browser.find_element(By.CSS_SELECTOR, f'[data-option-id="{option_id}"]')
    return str(row.find_element(By.CLASS_NAME, "votes").text)


def wait_until(browser: webdriver.Chrome, predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    try:
        WebDriverWait(browser, WAIT, poll_frequency=0.1).until(lambda _d: predicate())
    except TimeoutException:
        pytest.fail(f"the page did not show {what} within {WAIT:.0f} s; message: "
                    f"{browser.find_element(By.ID, 'message').text!r}")


def open_page(browser: webdriver.Chrome, stack, poll: Poll) -> None:  # type: ignore[no-untyped-def]
    browser.get(f"{stack.http_url}/polls/{poll.poll_id}")
    wait_until(browser, lambda: browser.find_element(By.ID, "live").text == "live", "its live stream connected")


def test_the_page_votes_and_shows_other_votes_live(browser, stack, api: ApiClient, make_poll: PollFactory) -> None:
    poll = make_poll(["Tea", "Coffee", "Mate"], question="What do you drink while the build runs?")
    open_page(browser, stack, poll)
    assert browser.find_element(By.ID, "question").text == "What do you drink while the build runs?"
    tea, coffee = poll.option_ids[0], poll.option_ids[1]
    assert bar_width(browser, tea) == 0

    browser.find_element(By.CSS_SELECTOR, f'[data-option-id="{tea}"] button').click()
    wait_until(browser, lambda: "was counted" in browser.find_element(By.ID, "message").text, "the vote counted")
    assert browser.find_element(By.ID, "message").text == "Your vote for “Tea” was counted."
    wait_until(browser, lambda: votes_text(browser, tea).startswith("1 "), "its own vote in the bar")
    # the bar grows through a 0.4 s CSS transition: its width is 0 at the transition's first frame
    wait_until(browser, lambda: bar_width(browser, tea) > 0, "its own bar growing")
    stored = api.rpc("poll_results", {"poll_id": poll.poll_id}).body
    assert [o["votes"] for o in stored["options"]] == [1, 0, 0]

    for _ in range(3):  # other people, through the API: the page must show them without a reload
        r = api.rpc("cast_vote", {"poll_id": poll.poll_id, "option_ids": [coffee], "voter_fingerprint": fingerprint()})
        assert r.status == 200, r.body
    wait_until(browser, lambda: votes_text(browser, coffee).startswith("3 "), "the other votes arriving live")
    wait_until(browser, lambda: bar_width(browser, coffee) > bar_width(browser, tea) > 0, "the bars moving")
    assert browser.find_element(By.ID, "total").text.startswith("4 ballots")
    if SCREENSHOT:
        browser.save_screenshot(str(PROJECT_ROOT / SCREENSHOT))


def test_a_closed_poll_answer_is_a_sentence(browser, stack, api: ApiClient, make_poll: PollFactory) -> None:
    poll = make_poll(2)
    open_page(browser, stack, poll)
    assert api.rpc("close_poll", {"poll_id": poll.poll_id}, claims=poll.creator).status == 200
    # the page learns of the closing live and disables its buttons; a vote sent anyway gets the 410
    wait_until(browser, lambda: "closed" in browser.find_element(By.ID, "total").text, "the poll closed")
    browser.execute_script(f"vote({poll.option_ids[0]!r}, 'option 1')")
    wait_until(browser, lambda: browser.find_element(By.ID, "message").text != "Sending your vote…", "an answer")
    message = browser.find_element(By.ID, "message")
    assert message.text == "This poll is closed: it no longer accepts votes."
    assert "error" in message.get_attribute("class")


def test_a_rate_limited_answer_is_a_sentence(browser, stack, make_poll: PollFactory) -> None:
    """The browser comes from 127.0.0.1: nginx's per-address vote limit (10/s, bursts of 20) answers 429 once
    the page votes faster than that (each vote from a new fingerprint, as many visitors behind one address)."""
    poll = make_poll(2, allow_multiple_votes=True)
    open_page(browser, stack, poll)
    statuses = browser.execute_async_script("""
        const [pollId, optionId, done] = arguments;
        const send = () => fetch("/rpc/cast_vote", {method: "POST", headers: {"Content-Type": "application/json"},
            body: JSON.stringify({poll_id: pollId, option_ids: [optionId], voter_fingerprint: "fp-" + crypto.randomUUID()})});
        Promise.all(Array.from({length: 40}, send)).then(answers => done(answers.map(a => a.status)));
    """, poll.poll_id, poll.option_ids[0])
    assert 429 in statuses, statuses
    browser.execute_script(f"vote({poll.option_ids[0]!r}, 'option 1')")
    wait_until(browser, lambda: browser.find_element(By.ID, "message").text != "Sending your vote…", "an answer")
    text = browser.find_element(By.ID, "message").text
    assert text.startswith("Too many votes from your connection right now. Please wait "), text
    assert text.endswith(" and try again."), text
