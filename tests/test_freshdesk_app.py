"""The Freshdesk ticket sidebar app (console_adapters/freshdesk_app/, FDK platform 3.0).

First its package, as scripts/pack_freshdesk_app.py assembles it (the app's own files and the
gateway's card): the manifest, request templates and installation parameters agree with each
other, with the app's code and with the gateway's routes, the page has every file it loads, and
it zips as `fdk pack` would.
Then the app itself in a real headless Chromium (the set-up of tests/test_card_browser.py): a
real service decides on a resolved Freshdesk ticket, a real gateway answers, the agent declines
with a reason, and the outcome is in the audit log.

The Freshworks platform cannot run here. A small shim stands in for its app client, and only
for it: `app.initialized()`, `client.data.get`, `client.events.on` and
`client.request.invokeTemplate`, which a proxy route turns into the HTTP request the template
describes, with the installation parameters (the secure token too) filled in server-side, as
Freshworks does. The assembled package's page, scripts and styles are served as they are.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import test_card_browser
from adapter_kit import now, post, running_gateway, serving
from offerdesk.v1 import offerdesk_pb2 as pb
from selenium import webdriver
from selenium.webdriver.common.by import By
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from test_adapters import FRESHDESK, FRESHDESK_TOKEN, gateway_settings, trigger_event
from test_card_browser import declines_with_the_keyboard_and_the_log_has_it, shot, wait
from test_server import treated_customers

from console_adapters.gateway import GatewaySettings, create_app
from service.server import Running
from service.settings import Settings
from service.simulator import World

#: the card page tests' Chromium, one for both files' tests (pytest finds fixtures by name)
browser = test_card_browser.browser
ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "console_adapters" / "freshdesk_app"
CARD = ROOT / "console_adapters" / "card"
PACK = ROOT / "scripts" / "pack_freshdesk_app.py"
#: what `fdk pack` puts in the zip (the app's sources; never dist/, node_modules/ or logs)
PACKAGE_TOP = {"manifest.json", "app", "config"}
#: the iparam template tags: `<%= iparam.name %>`, `<%= context.name %>`
TAG = re.compile(r"<%=\s*(iparam|context)\.(\w+)\s*%>")
#: the page's own files: src= and href= that are neither URLs nor placeholders
LOCAL = re.compile(r'(?:src|href)="([^"{:]+)"')
#: the card's states, in a page's markup
STATES = re.compile(r'<section id="([\w-]+)" class="state"')

# -- The package --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app as scripts/pack_freshdesk_app.py assembles it for `fdk pack`."""
    target = tmp_path_factory.mktemp("freshdesk") / "app"
    subprocess.run([sys.executable, str(PACK), str(target)], check=True, capture_output=True)
    return target


def manifest(package: Path) -> dict[str, Any]:
    return dict(json.loads((package / "manifest.json").read_text()))


def templates(package: Path) -> dict[str, Any]:
    return dict(json.loads((package / "config" / "requests.json").read_text()))


def iparams(package: Path) -> dict[str, Any]:
    return dict(json.loads((package / "config" / "iparams.json").read_text()))


def test_the_manifest_is_platform_3_with_a_ticket_sidebar(package: Path) -> None:
    m = manifest(package)
    assert m["platform-version"] == "3.0"
    assert "product" not in m  # the 2.3 layout, deprecated
    sidebar = m["modules"]["support_ticket"]["location"]["ticket_sidebar"]
    assert sidebar["url"] == "index.html"
    assert (package / "app" / sidebar["url"]).is_file()
    assert (package / "app" / sidebar["icon"]).is_file()


def test_every_template_the_app_invokes_is_declared_and_configured(package: Path) -> None:
    declared = set(manifest(package)["modules"]["common"]["requests"])
    configured = set(templates(package))
    script = (package / "app" / "scripts" / "app.js").read_text()
    invoked = set(re.findall(r"invokeTemplate\(\s*\"(\w+)\"", script))
    assert invoked == {"lookupDecision", "recordOutcome"}
    assert invoked <= declared
    assert declared == configured


def test_the_templates_use_declared_iparams_and_keep_the_token_in_a_header(package: Path) -> None:
    params = iparams(package)
    assert params["token"]["secure"] is True
    assert not params["gateway_host"].get("secure", False)
    for name, template in templates(package).items():
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
    lookup = templates(package)["lookupDecision"]["schema"]
    assert lookup["headers"]["X-Offerdesk-Token"] == "<%= iparam.token %>"
    # The outcome call needs no secret: the decision's outcome token authorises it.
    assert "token" not in json.dumps(templates(package)["recordOutcome"]["schema"]["headers"])


def test_the_templates_call_routes_the_gateway_has(package: Path) -> None:
    app = create_app(GatewaySettings(freshdesk={"token": FRESHDESK_TOKEN}, outcome_key="k" * 32))
    paths = [getattr(route, "path_regex", None) for route in app.routes]
    for name, template in templates(package).items():
        path = template["schema"]["path"]
        assert any(r is not None and r.match(path) for r in paths), f"{name}: no route {path}"
    assert templates(package)["lookupDecision"]["schema"]["path"] == "/lookup/freshdesk"
    assert templates(package)["recordOutcome"]["schema"]["path"] == "/outcomes"


def test_the_page_loads_the_app_client_the_card_and_its_own_files(package: Path) -> None:
    html = (package / "app" / "index.html").read_text()
    assert '<script src="{{{appclient}}}"></script>' in html
    local = LOCAL.findall(html)
    assert local == [
        "styles/card.css",
        "styles/sidebar.css",
        "scripts/card_view.js",  # the card, before the script that gives it its transport
        "scripts/app.js",
    ]
    for path in local:
        assert (package / "app" / path).is_file(), path
    reasons = re.findall(r'<option value="(\w+)">', html)
    assert reasons == [
        n.lower() for n, v in pb.DeclineReason.items() if v != pb.DECLINE_REASON_UNSPECIFIED
    ]


def test_the_package_holds_the_card_page_s_card_with_the_not_yet_state(package: Path) -> None:
    for shared in ("styles/card.css", "scripts/card_view.js"):
        assert (package / "app" / shared).read_bytes() == (CARD / Path(shared).name).read_bytes()
    page = (package / "app" / "index.html").read_text()
    card = (CARD / "card.html").read_text()
    assert STATES.findall(page) == [*STATES.findall(card), "not-yet"]
    assert page.count('<main id="card"') == 1 and "<!-- card:" not in page
    # git holds the card once: the app's sources have no copy of it
    assert not (APP / "app" / "styles" / "card.css").exists()
    assert not (APP / "app" / "scripts" / "card_view.js").exists()
    assert 'id="offer"' not in (APP / "app" / "index.html").read_text()


def test_the_package_zips_with_the_files_fdk_expects(package: Path, tmp_path: Path) -> None:
    target = tmp_path / "offerdesk-freshdesk.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(package.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(package).as_posix())
    with zipfile.ZipFile(target) as zipped:
        names = set(zipped.namelist())
        assert zipped.testzip() is None
        assert json.loads(zipped.read("manifest.json")) == manifest(package)
    assert {n.split("/")[0] for n in names} == PACKAGE_TOP
    sidebar = manifest(package)["modules"]["support_ticket"]["location"]["ticket_sidebar"]
    page = (package / "app" / "index.html").read_text()
    referenced = {f"app/{sidebar['url']}", f"app/{sidebar['icon']}"}
    referenced |= {f"app/{path}" for path in LOCAL.findall(page)}
    assert referenced | {"manifest.json", "config/iparams.json", "config/requests.json"} <= names


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


def freshdesk_host(
    package: Path, ticket: int, installed: dict[str, str], invoked: list[str]
) -> Starlette:
    """Freshworks' side of the app, as far as the app sees it (module docstring)."""

    async def page(request: Request) -> HTMLResponse:
        html = (package / "app" / "index.html").read_text()
        return HTMLResponse(html.replace("{{{appclient}}}", "/fdk-shim.js"))

    async def shim(request: Request) -> Response:
        values = {"ticket": json.dumps(ticket), "agent": json.dumps(AGENT)}
        return Response(SHIM % values, media_type="text/javascript")

    async def invoke(request: Request) -> JSONResponse:
        asked = await request.json()
        template = templates(package).get(asked["name"])
        declared = manifest(package)["modules"]["common"]["requests"]
        if template is None or asked["name"] not in declared:
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
            Mount("/", StaticFiles(directory=package / "app")),
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


#: the first decision of a kind over resolved Freshdesk tickets, and its ticket id
Decided = Callable[[str], tuple[dict[str, Any], int]]
#: the app open in the browser on a ticket, installed with a token (the right one unless given):
#: a context that yields the templates the app invokes
Sidebar = Callable[..., AbstractContextManager[list[str]]]


@pytest.fixture
def decided(gateway: str, world: World, settings: Settings) -> Decided:
    def first(kind: str) -> tuple[dict[str, Any], int]:
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

    return first


@pytest.fixture
def sidebar(browser: webdriver.Chrome, package: Path, gateway: str) -> Sidebar:
    @contextmanager
    def opened(ticket: int, token: str = FRESHDESK_TOKEN) -> Iterator[list[str]]:
        invoked: list[str] = []
        installed = {"gateway_host": gateway.removeprefix("http://"), "token": token}
        with serving(freshdesk_host(package, ticket, installed, invoked)) as host:
            browser.get(f"{host}/index.html")
            yield invoked

    return opened


def test_the_agent_sees_the_offer_and_declines_with_a_reason_and_the_log_has_it(
    browser: webdriver.Chrome, sidebar: Sidebar, decided: Decided, server: Running
) -> None:
    offer, ticket = decided("OFFER")
    with sidebar(ticket) as invoked:
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

        outcome = declines_with_the_keyboard_and_the_log_has_it(
            browser, server, offer["decision_id"], "renews in March", "freshdesk-sidebar-"
        )
        assert outcome.body["agent_id"] == str(AGENT)  # the agent who clicked
        # Opened again (the helper's refresh), the sidebar looks the decision up again.
        assert invoked == ["lookupDecision", "recordOutcome", "lookupDecision"]


def test_the_sidebar_says_why_there_is_no_offer_or_none_yet(
    browser: webdriver.Chrome, sidebar: Sidebar, decided: Decided
) -> None:
    decision, ticket = decided("NO_OFFER")
    with sidebar(ticket):
        wait(browser, "no-offer")
        message = browser.find_element(By.ID, "agent-message").text
        assert message and message.lower() in decision["agent_message"].lower()
        shot(browser, "freshdesk-sidebar-no-offer")
    with sidebar(99_999_999):
        wait(browser, "not-yet")
        assert not browser.find_element(By.ID, "offer").is_displayed()


def test_a_wrong_token_shows_the_error_state_naming_it_and_records_nothing(
    browser: webdriver.Chrome, sidebar: Sidebar, decided: Decided, server: Running
) -> None:
    _, ticket = decided("OFFER")
    logged = server.desk.store.head()[0]
    with sidebar(ticket, token=FRESHDESK_TOKEN[:-1] + "X"):
        wait(browser, "error")
        assert "x-offerdesk-token" in browser.find_element(By.ID, "error-message").text
        assert browser.switch_to.active_element.get_attribute("id") == "retry"
        shot(browser, "freshdesk-sidebar-error")
    assert server.desk.store.head()[0] == logged
