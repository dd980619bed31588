"""The agent's card in a real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium by explicit path: nothing is downloaded). A real service decides, a real gateway serves
the page, the agent declines with a reason, and the outcome is in the audit log.

Screenshots of each state are saved under var/test-artifacts/ (docs/img/card-offer.png is one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from adapter_kit import now, post, running_gateway, serving
from offerdesk.v1 import offerdesk_pb2 as pb
from offerdesk.v1 import offerdesk_pb2_grpc as pb_grpc
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from test_adapters import ZENDESK, ZENDESK_APP_TOKEN, ZENDESK_SIDEBAR, gateway_settings
from test_server import treated_customers

from audit.records import StoredRecord
from service.server import Running
from service.settings import Settings
from service.simulator import World

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "var" / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "Debian's chromium and chromium-driver are needed: `make test` installs them "
        "(scripts/ensure_chromium.sh)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=360,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    )
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def gateway(server: Running, settings: Settings) -> Iterator[str]:
    with running_gateway(gateway_settings(ZENDESK, f"127.0.0.1:{server.port}", settings)) as base:
        yield base


def solved(gateway: str, external_id: str, ticket: str) -> dict[str, str]:
    body = ZENDESK.solved(external_id, ticket)
    reply = post(gateway, ZENDESK, body, ZENDESK.sign(body, now(), ticket))
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def first_on_ticket(
    gateway: str, world: World, settings: Settings, kind: str
) -> tuple[dict[str, str], str]:
    """The first decision of ``kind`` over solved tickets, and its ticket id."""
    for i, cid in enumerate(treated_customers(world, settings)[:80]):
        ticket = f"7{i:04d}"
        decision = solved(gateway, world.external_ids(cid)["zendesk"], ticket)
        if decision["kind"] == kind:
            return decision, ticket
    raise AssertionError(f"no {kind} in 80 solved tickets")


def first(gateway: str, world: World, settings: Settings, kind: str) -> dict[str, str]:
    return first_on_ticket(gateway, world, settings, kind)[0]


def wait(driver: webdriver.Chrome, element_id: str) -> None:
    WebDriverWait(driver, 10).until(ec.visibility_of_element_located((By.ID, element_id)))


def shot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"card-{name}.png"
    driver.find_element(By.ID, "card").screenshot(str(path))
    return path


def declines_with_the_keyboard_and_the_log_has_it(
    driver: webdriver.Chrome, server: Running, decision_id: str, note: str, shots: str
) -> StoredRecord:
    """On a card showing an offer: Tab from Accept to Decline, Enter, pick "Too expensive",
    write ``note``, submit. The card says so and its buttons are off, the service has the
    decline with its reason (the note stays out of the chain), and the card opened again still
    says it. Screenshots are named ``<shots>decline`` and ``<shots>recorded``; the outcome's log
    entry is returned."""
    driver.find_element(By.ID, "accept").send_keys(Keys.TAB)
    active = driver.switch_to.active_element
    assert active.get_attribute("id") == "decline"
    active.send_keys(Keys.ENTER)
    wait(driver, "decline-form")
    assert driver.switch_to.active_element.get_attribute("id") == "decline-reason"
    Select(driver.find_element(By.ID, "decline-reason")).select_by_value("too_expensive")
    driver.find_element(By.ID, "decline-note").send_keys(note)
    shot(driver, f"{shots}decline")
    driver.find_element(By.CSS_SELECTOR, "#decline-form button[type=submit]").click()
    WebDriverWait(driver, 10).until(ec.text_to_be_present_in_element((By.ID, "status"), "Recorded"))
    assert "Too expensive" in driver.find_element(By.ID, "status").text
    assert driver.find_element(By.ID, "accept").get_attribute("disabled") is not None
    assert not driver.find_element(By.ID, "decline-form").is_displayed()
    shot(driver, f"{shots}recorded")

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stored = pb_grpc.OfferDeskStub(channel).GetDecision(
            pb.GetDecisionRequest(decision_id=decision_id)
        )
    assert stored.outcome == pb.DECLINED
    outcome = server.desk.store.find("outcome", decision_id)
    assert outcome is not None and outcome.body["decline_reason"] == "too_expensive"
    assert note not in outcome.record.decode()

    driver.refresh()  # a recorded card stays recorded
    WebDriverWait(driver, 10).until(
        ec.text_to_be_present_in_element((By.ID, "status"), "Recorded: declined")
    )
    return outcome


def test_the_agent_sees_the_offer_and_declines_with_a_reason_and_the_log_has_it(
    browser: webdriver.Chrome, gateway: str, server: Running, world: World, settings: Settings
) -> None:
    offer = first(gateway, world, settings, "OFFER")
    browser.get(gateway + offer["card_url"])
    wait(browser, "offer")
    card = offer["card"]
    assert browser.find_element(By.ID, "offer-name").text == card["offer_name"]  # type: ignore[index]
    points = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#talking-points li")]
    assert points == card["talking_points"]  # type: ignore[index]
    reasons = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#reasons li")]
    assert reasons == [r["text"] for r in card.get("reasons", [])][:3]  # type: ignore[union-attr]
    rule = card["firing_rule"]  # type: ignore[index]
    assert browser.find_element(By.ID, "rule").text == rule["description"]  # type: ignore[index]
    assert browser.find_element(By.ID, "price").text  # a formatted price
    assert browser.find_element(By.ID, "card").size["width"] <= 320
    assert not browser.find_element(By.ID, "decline-form").is_displayed()
    shot(browser, "offer")

    declines_with_the_keyboard_and_the_log_has_it(
        browser, server, offer["decision_id"], "asked to call back next quarter", ""
    )


def test_the_no_offer_state_says_why(
    browser: webdriver.Chrome, gateway: str, world: World, settings: Settings
) -> None:
    decision = first(gateway, world, settings, "NO_OFFER")
    browser.get(gateway + decision["card_url"])
    wait(browser, "no-offer")
    message = browser.find_element(By.ID, "agent-message").text
    assert message and message.lower() in decision["agent_message"].lower()
    assert not browser.find_elements(By.CSS_SELECTOR, "#offer:not([hidden])")
    shot(browser, "no-offer")


def test_a_card_with_a_wrong_token_shows_the_error_state_and_records_nothing(
    browser: webdriver.Chrome, gateway: str, server: Running, world: World, settings: Settings
) -> None:
    offer = first(gateway, world, settings, "OFFER")
    size = server.desk.store.head()[0]
    browser.get(f"{gateway}/card/{offer['decision_id']}?token=forged&agent=381944")
    wait(browser, "error")
    assert "token" in browser.find_element(By.ID, "error-message").text
    assert browser.switch_to.active_element.get_attribute("id") == "retry"
    shot(browser, "error")
    assert server.desk.store.head()[0] == size
    api = httpx.get(f"{gateway}/api/decisions/{offer['decision_id']}", params={"token": "x"})
    assert api.status_code == 401 and json.loads(api.content)["error"]["field"] == "token"


# -- The Zendesk sidebar app (console_adapters/zendesk_app/) in the same browser -------------
# Zendesk's side cannot run here: the Apps framework SDK and the proxy that adds the secure
# app token are stood in for by a stub client and a small proxy route, as Zendesk documents
# them (client.metadata/get/request/invoke/on; `secure: true` requests made server-side with
# {{setting.app_token}} filled in). The app's own page and the gateway are the real ones.

ZENDESK_APP = Path(__file__).resolve().parent.parent / "console_adapters" / "zendesk_app"
ZAF_SDK = "https://static.zdassets.com/zendesk_app_framework_sdk/2.0/zaf_sdk.min.js"
STUB = """
window.ZAFClient = { init: function () { return {
  metadata: function () { return Promise.resolve({ settings: { gateway_url: %(gateway)s } }); },
  get: function () {
    return Promise.resolve({ "ticket.id": %(ticket)s, "currentUser.id": %(agent)s });
  },
  request: function (options) {
    return fetch("/proxy", { method: "POST", headers: { "content-type": "application/json" },
                             body: JSON.stringify(options) })
      .then(function (r) { return r.json().then(function (body) {
        if (!r.ok) { throw { status: r.status, responseJSON: body }; }
        return body;
      }); });
  },
  invoke: function () { return Promise.resolve(); },
  on: function () {}
}; } };
"""


def zendesk_host(gateway: str, ticket: str, app_token: str) -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        html = (ZENDESK_APP / "assets" / "iframe.html").read_text()
        assert ZAF_SDK in html
        return HTMLResponse(html.replace(ZAF_SDK, "/stub.js"))

    async def stub(request: Request) -> Response:
        values = {
            "gateway": json.dumps(gateway),
            "ticket": json.dumps(int(ticket)),
            "agent": "381944",
        }
        return Response(STUB % values, media_type="text/javascript")

    async def proxy(request: Request) -> Response:
        options = await request.json()
        assert options["secure"] is True  # the token is only ever added here, server-side
        headers = {
            k: v.replace("{{setting.app_token}}", app_token) for k, v in options["headers"].items()
        }
        headers["content-type"] = options["contentType"]
        reply = httpx.request(
            options["type"], options["url"], content=options["data"], headers=headers
        )
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")

    return Starlette(
        routes=[
            Route("/assets/iframe.html", page),
            Route("/stub.js", stub),
            Route("/proxy", proxy, methods=["POST"]),
        ]
    )


@pytest.fixture
def sidebar_gateway(server: Running, settings: Settings) -> Iterator[str]:
    with running_gateway(
        gateway_settings(ZENDESK_SIDEBAR, f"127.0.0.1:{server.port}", settings)
    ) as base:
        yield base


def test_the_zendesk_sidebar_app_shows_the_ticket_card(
    browser: webdriver.Chrome, sidebar_gateway: str, world: World, settings: Settings
) -> None:
    manifest = json.loads((ZENDESK_APP / "manifest.json").read_text())
    assert manifest["location"]["support"]["ticket_sidebar"]["url"] == "assets/iframe.html"
    assert {p["name"]: p.get("secure", False) for p in manifest["parameters"]} == {
        "gateway_url": False,
        "app_token": True,
    }
    offer, ticket = first_on_ticket(sidebar_gateway, world, settings, "OFFER")
    with serving(zendesk_host(sidebar_gateway, ticket, ZENDESK_APP_TOKEN)) as host:
        browser.get(f"{host}/assets/iframe.html")
        wait(browser, "card")
        assert not browser.find_element(By.ID, "status").is_displayed()
        browser.switch_to.frame(browser.find_element(By.ID, "card"))
        try:
            wait(browser, "offer")
            assert browser.find_element(By.ID, "offer-name").text == offer["card"]["offer_name"]  # type: ignore[index]
            shot(browser, "zendesk-sidebar")
        finally:
            browser.switch_to.default_content()
    with serving(zendesk_host(sidebar_gateway, "99999", ZENDESK_APP_TOKEN)) as host:
        browser.get(f"{host}/assets/iframe.html")
        WebDriverWait(browser, 10).until(
            ec.text_to_be_present_in_element((By.ID, "status"), "No offer for this ticket yet")
        )
