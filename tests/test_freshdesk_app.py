"""The Freshdesk ticket sidebar app (console_adapters/freshdesk_app/, FDK platform 3.0).

First its package: the manifest, request templates and installation parameters agree with each
other, with the app's code and with the gateway's routes, and it zips as `fdk pack` would.
Then the app itself in a real headless Chromium (the set-up of tests/test_card_browser.py): a
real service decides on a resolved Freshdesk ticket, a real gateway answers, the agent declines
with a reason, and the outcome is in the audit log.

The Freshworks platform cannot run here. A small shim stands in for its app client, and only
for it: `app.initialized()`, `client.data.get`, `client.events.on` and
`client.request.invokeTemplate`, which a proxy route turns into the HTTP request the template
describes, with the installation parameters (the secure token too) filled in server-side, as
Freshworks does. The app's own page, script and styles are served as they are.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
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
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from test_adapters import FRESHDESK, FRESHDESK_TOKEN, gateway_settings, trigger_event
from test_card_browser import browser, shot, wait  # noqa: F401  (browser is a fixture)
from test_server import treated_customers

from console_adapters.gateway import GatewaySettings, create_app
from service.server import Running
from service.settings import Settings
from service.simulator import World

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "console_adapters" / "freshdesk_app"
#: what `fdk pack` puts in the zip (the app's sources; never dist/, node_modules/ or logs)
PACKAGE_TOP = {"manifest.json", "app", "config"}
#: the iparam template tags: `<%= iparam.name %>`, `<%= context.name %>`
TAG = re.compile(r"<%=\s*(iparam|context)\.(\w+)\s*%>")

# -- The package --------------------------------------------------------------------------


def manifest() -> dict[str, Any]:
    return dict(json.loads((APP / "manifest.json").read_text()))


def templates() -> dict[str, Any]:
    return dict(json.loads((APP / "config" / "requests.json").read_text()))


def iparams() -> dict[str, Any]:
    return dict(json.loads((APP / "config" / "iparams.json").read_text()))


def test_the_manifest_is_platform_3_with_a_ticket_sidebar() -> None:
    m = manifest()
    assert m["platform-version"] == "3.0"
    assert "product" not in m  # the 2.3 layout, deprecated
    sidebar = m["modules"]["support_ticket"]["location"]["ticket_sidebar"]
    assert sidebar["url"] == "index.html"
    assert (APP / "app" / sidebar["url"]).is_file()
    assert (APP / "app" / sidebar["icon"]).is_file()


def test_every_template_the_app_invokes_is_declared_and_configured() -> None:
    declared = set(manifest()["modules"]["common"]["requests"])
    configured = set(templates())
    invoked = set(
        re.findall(
            r"invokeTemplate\(\s*\"(\w+)\"", (APP / "app" / "scripts" / "app.js").read_text()
        )
    )
    assert invoked == {"lookupDecision", "recordOutcome"}
    assert invoked <= declared
    assert declared == configured


def test_the_templates_use_declared_iparams_and_keep_the_token_in_a_header() -> None:
    params = iparams()
    assert params["token"]["secure"] is True
    assert not params["gateway_host"].get("secure", False)
    for name, template in templates().items():
        schema = template["schema"]
        assert schema["protocol"] == "https", name
        assert schema["method"] == "POST", name
        assert schema["path"].startswith("/"), name
        assert "://" not in schema["host"] and "/" not in schema["host"], name
        used = {
            where: {n for kind, n in TAG.findall(json.dumps(value)) if kind == "iparam"}
            for where, value in schema.items()
        }
        for where, names in used.items():
            assert names <= set(params), f"{name}.{where} uses undeclared iparams {names}"
            # Freshworks substitutes secure iparams only in headers.
            if where != "headers":
                assert not {n for n in names if params[n].get("secure")}, f"{name}.{where}"
        assert used["host"] == {"gateway_host"}, name
    lookup = templates()["lookupDecision"]["schema"]
    assert lookup["headers"]["X-Offerdesk-Token"] == "<%= iparam.token %>"
    # The outcome call needs no secret: the decision's outcome token authorises it.
    assert "token" not in json.dumps(templates()["recordOutcome"]["schema"]["headers"])


def test_the_templates_call_routes_the_gateway_has() -> None:
    app = create_app(GatewaySettings(freshdesk={"token": FRESHDESK_TOKEN}, outcome_key="k" * 32))
    paths = [getattr(route, "path_regex", None) for route in app.routes]
    for name, template in templates().items():
        path = template["schema"]["path"]
        assert any(r is not None and r.match(path) for r in paths), f"{name}: no route {path}"
    assert templates()["lookupDecision"]["schema"]["path"] == "/lookup/freshdesk"
    assert templates()["recordOutcome"]["schema"]["path"] == "/outcomes"


def test_the_page_loads_the_app_client_and_its_own_files() -> None:
    html = (APP / "app" / "index.html").read_text()
    assert '<script src="{{{appclient}}}"></script>' in html
    local = re.findall(r'(?:src|href)="([^"{:]+)"', html)
    assert set(local) == {"styles/card.css", "styles/sidebar.css", "scripts/app.js"}
    for path in local:
        assert (APP / "app" / path).is_file(), path
    reasons = re.findall(r'<option value="(\w+)">', html)
    assert reasons == [
        n.lower() for n, v in pb.DeclineReason.items() if v != pb.DECLINE_REASON_UNSPECIFIED
    ]


def test_the_sidebar_shares_the_card_page_styles() -> None:
    shared = (APP / "app" / "styles" / "card.css").read_text()
    assert shared == (ROOT / "console_adapters" / "card" / "card.css").read_text()


def test_the_package_zips_with_the_files_fdk_expects(tmp_path: Path) -> None:
    target = tmp_path / "offerdesk-freshdesk.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as package:
        for path in sorted(APP.rglob("*")):
            if path.is_file():
                package.write(path, path.relative_to(APP).as_posix())
    with zipfile.ZipFile(target) as package:
        names = set(package.namelist())
        assert package.testzip() is None
        assert json.loads(package.read("manifest.json")) == manifest()
    assert {n.split("/")[0] for n in names} == PACKAGE_TOP
    assert {
        "manifest.json",
        "app/index.html",
        "app/scripts/app.js",
        "app/styles/card.css",
        "app/styles/images/icon.svg",
        "config/iparams.json",
        "config/requests.json",
    } <= names


# -- The app in a browser -----------------------------------------------------------------

SHIM = """
(function () {
  var client = {
    data: {
      get: function (name) {
        if (name === "ticket") {
          return Promise.resolve({ ticket: { id: %(ticket)s, status: 4, responder_id: 9 } });
        }
        if (name === "loggedInUser") {
          return Promise.resolve({ loggedInUser: { id: %(agent)s } });
        }
        return Promise.reject({ message: "no data " + name });
      }
    },
    events: { on: function () {} },
    request: {
      invokeTemplate: function (name, options) {
        return fetch("/invoke", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ name: name, options: options || {} })
        }).then(function (r) {
          return r.json().then(function (result) { if (!r.ok) { throw result; } return result; });
        });
      }
    }
  };
  window.app = { initialized: function () { return Promise.resolve(client); } };
})();
"""

AGENT = 5_019_001


def freshdesk_host(ticket: int, installed: dict[str, str], invoked: list[str]) -> Starlette:
    """Freshworks' side of the app, as far as the app sees it (module docstring)."""

    async def page(request: Request) -> HTMLResponse:
        html = (APP / "app" / "index.html").read_text()
        return HTMLResponse(html.replace("{{{appclient}}}", "/fdk-shim.js"))

    async def shim(request: Request) -> Response:
        values = {"ticket": json.dumps(ticket), "agent": json.dumps(AGENT)}
        return Response(SHIM % values, media_type="text/javascript")

    async def invoke(request: Request) -> JSONResponse:
        asked = await request.json()
        template = templates().get(asked["name"])
        if template is None or asked["name"] not in manifest()["modules"]["common"]["requests"]:
            return JSONResponse({"status": 400, "response": "Request template not found"}, 400)
        invoked.append(asked["name"])
        options = asked["options"]

        def fill(text: str) -> str:
            def one(tag: re.Match[str]) -> str:
                source = installed if tag.group(1) == "iparam" else options.get("context", {})
                return str(source[tag.group(2)])  # a KeyError fails the test, loudly

            return TAG.sub(one, text)

        schema = template["schema"]
        # The real platform calls https://<host>; the test gateway speaks plain HTTP on loopback.
        reply = httpx.request(
            schema["method"],
            f"http://{fill(schema['host'])}{fill(schema['path'])}",
            headers={k: fill(v) for k, v in schema.get("headers", {}).items()},
            content=options.get("body", ""),
            timeout=10,
        )
        result = {"status": reply.status_code, "headers": {}, "response": reply.text}
        if not reply.is_success:
            result["errorSource"] = "APP"
        return JSONResponse(result, status_code=reply.status_code)

    return Starlette(
        routes=[
            Route("/index.html", page),
            Route("/fdk-shim.js", shim),
            Route("/invoke", invoke, methods=["POST"]),
            Mount("/", StaticFiles(directory=APP / "app")),
        ]
    )


@pytest.fixture
def data_dir(data_dir: Path) -> Path:
    """The identity map also knows Freshdesk requesters (fd-<id>), as a customer's warehouse
    would: the simulated world's Zendesk requesters, under Freshdesk ids."""
    path = data_dir / "profiles" / "identities.parquet"
    rows = pq.read_table(path).to_pylist()
    added = [
        {**r, "source": "freshdesk", "external_id": "fd-" + r["external_id"].removeprefix("zd-")}
        for r in rows
        if r["source"] == "zendesk"
    ]
    pq.write_table(pa.Table.from_pylist(rows + added), path)
    return data_dir


FRESHDESK_APP = {"freshdesk": {"token": FRESHDESK_TOKEN, "external_id_prefix": "fd-"}}


@pytest.fixture
def gateway(server: Running, settings: Settings) -> Iterator[str]:
    helpdesk = replace(FRESHDESK, settings=FRESHDESK_APP)
    with running_gateway(gateway_settings(helpdesk, f"127.0.0.1:{server.port}", settings)) as base:
        yield base


def resolved(
    gateway: str, world: World, settings: Settings, kind: str
) -> tuple[dict[str, Any], int]:
    """The first decision of ``kind`` over resolved Freshdesk tickets, and its ticket id."""
    for i, cid in enumerate(treated_customers(world, settings)[:80]):
        zendesk_id = world.external_ids(cid).get("zendesk")
        if zendesk_id is None:
            continue
        ticket = 81_000 + i
        body = trigger_event("Resolved", zendesk_id.removeprefix("zd-"), str(ticket))
        reply = post(gateway, FRESHDESK, body, FRESHDESK.sign(body, now(), str(ticket)))
        assert reply.status_code == 200, reply.text
        if reply.json()["kind"] == kind:
            return dict(reply.json()), ticket
    raise AssertionError(f"no {kind} in 80 resolved tickets")


def installed(gateway: str, token: str = FRESHDESK_TOKEN) -> dict[str, str]:
    return {"gateway_host": gateway.removeprefix("http://"), "token": token}


def test_the_agent_sees_the_offer_and_declines_with_a_reason_and_the_log_has_it(
    browser: webdriver.Chrome,  # noqa: F811
    gateway: str,
    server: Running,
    world: World,
    settings: Settings,
) -> None:
    offer, ticket = resolved(gateway, world, settings, "OFFER")
    invoked: list[str] = []
    with serving(freshdesk_host(ticket, installed(gateway), invoked)) as host:
        browser.get(f"{host}/index.html")
        wait(browser, "offer")
        card = offer["card"]
        assert browser.find_element(By.ID, "offer-name").text == card["offer_name"]
        points = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#talking-points li")]
        assert points == card["talking_points"]
        reasons = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#reasons li")]
        assert reasons == [r["text"] for r in card.get("reasons", [])][:3]
        assert browser.find_element(By.ID, "price").text
        assert browser.find_element(By.ID, "card").size["width"] <= 320
        shot(browser, "freshdesk-sidebar-offer")

        # Keyboard only: Tab to Decline, Enter, pick a reason, submit.
        browser.find_element(By.ID, "accept").send_keys(Keys.TAB)
        active = browser.switch_to.active_element
        assert active.get_attribute("id") == "decline"
        active.send_keys(Keys.ENTER)
        wait(browser, "decline-form")
        assert browser.switch_to.active_element.get_attribute("id") == "decline-reason"
        Select(browser.find_element(By.ID, "decline-reason")).select_by_value("too_expensive")
        browser.find_element(By.ID, "decline-note").send_keys("renews in March")
        browser.find_element(By.CSS_SELECTOR, "#decline-form button[type=submit]").click()
        WebDriverWait(browser, 10).until(
            ec.text_to_be_present_in_element((By.ID, "status"), "Recorded")
        )
        assert "Too expensive" in browser.find_element(By.ID, "status").text
        assert browser.find_element(By.ID, "accept").get_attribute("disabled") is not None
        shot(browser, "freshdesk-sidebar-recorded")
        assert invoked == ["lookupDecision", "recordOutcome"]

        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stored = pb_grpc.OfferDeskStub(channel).GetDecision(
                pb.GetDecisionRequest(decision_id=offer["decision_id"])
            )
        assert stored.outcome == pb.DECLINED
        outcome = server.desk.store.find("outcome", offer["decision_id"])
        assert outcome is not None and outcome.body["decline_reason"] == "too_expensive"
        assert outcome.body["agent_id"] == str(AGENT)  # the agent who clicked
        assert "renews in March" not in outcome.record.decode()  # the note stays out of the chain

        browser.refresh()  # reopened, the sidebar says what was recorded
        WebDriverWait(browser, 10).until(
            ec.text_to_be_present_in_element((By.ID, "status"), "Recorded: declined")
        )


def test_the_sidebar_says_why_there_is_no_offer_or_none_yet(
    browser: webdriver.Chrome,  # noqa: F811
    gateway: str,
    world: World,
    settings: Settings,
) -> None:
    decision, ticket = resolved(gateway, world, settings, "NO_OFFER")
    with serving(freshdesk_host(ticket, installed(gateway), [])) as host:
        browser.get(f"{host}/index.html")
        wait(browser, "no-offer")
        message = browser.find_element(By.ID, "agent-message").text
        assert message and message.lower() in decision["agent_message"].lower()
        shot(browser, "freshdesk-sidebar-no-offer")
    with serving(freshdesk_host(99_999_999, installed(gateway), [])) as host:
        browser.get(f"{host}/index.html")
        wait(browser, "not-yet")
        assert not browser.find_element(By.ID, "offer").is_displayed()


def test_a_wrong_token_shows_the_error_state_naming_it_and_records_nothing(
    browser: webdriver.Chrome,  # noqa: F811
    gateway: str,
    server: Running,
    world: World,
    settings: Settings,
) -> None:
    _, ticket = resolved(gateway, world, settings, "OFFER")
    logged = server.desk.store.head()[0]
    wrong = installed(gateway, token=FRESHDESK_TOKEN[:-1] + "X")
    with serving(freshdesk_host(ticket, wrong, [])) as host:
        browser.get(f"{host}/index.html")
        wait(browser, "error")
        assert "x-offerdesk-token" in browser.find_element(By.ID, "error-message").text
        assert browser.switch_to.active_element.get_attribute("id") == "retry"
        shot(browser, "freshdesk-sidebar-error")
    assert server.desk.store.head()[0] == logged
