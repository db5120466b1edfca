"""The management console and API behind the real Envoy of the local stack, and the console
driven in a real headless browser (Debian's chromium and chromedriver, through Selenium;
nothing is downloaded at run time)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extauthz.admin import teams, tokens
from extauthz.config import Settings
from extauthz.core.credentials import token_hash
from extauthz.dev.stack import Stack
from extauthz.storage.store import TOKEN_KINDS
from tests.support.procs import local_stack, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.envoy]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FAILURE_BURST = 12


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # usage reaches Redis twice a second, so the console's chart shows it at once
    settings = Settings(usage_flush=0.5, auth_failure_burst=FAILURE_BURST, auth_failure_rate=0.1)
    with local_stack(tmp_path_factory.mktemp("stack"), settings) as s:
        yield s


def request(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request from the loopback address `source` (127.0.0.0/8 is all ours)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin_token(stack: Stack) -> str:
    return tokens.create(stack.store(), ["*"], ["admin"], name="test admin", now=time.time()).token


def model_status(stack: Stack, token: str) -> int:
    return request(stack.ports.external.port, "/predictions/densenet161", "POST", bearer(token))[0]


def chat(stack: Stack, secret: str, model: str) -> int:
    body = json.dumps({"model": model, "messages": []}).encode()
    headers = {**bearer(secret), "Content-Type": "application/json"}
    return request(stack.ports.external.port, "/v1/chat/completions", "POST", headers, body)[0]


def test_console_and_api_behind_envoy(stack: Stack) -> None:
    port = stack.ports.console.port
    status, headers, page = request(port, "/")
    assert status == 200 and b"extauthz console" in page
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in headers
    for asset, kind in (("/console.js", "text/javascript"), ("/console.css", "text/css")):
        status, headers, text = request(port, asset)
        assert status == 200 and headers["content-type"].startswith(kind)
        # no other host: the only URL in them is the SVG namespace, a name, not a fetch
        urls = re.findall(rb"[a-z]+://[^\s\"')]+", text)
        assert set(urls) <= {b"http://www.w3.org/2000/svg"}, urls
        assert b"innerHTML" not in text and b"eval(" not in text
    # nothing in the page comes from another host, and nothing runs inline
    html = page.decode()
    assert "http://" not in html and "https://" not in html and "<style" not in html
    assert "<script>" not in html and " style=" not in html and "onclick" not in html
    # the API through Envoy: 401 anonymous, a token made there works through Envoy at once
    assert request(port, "/v1/tokens")[0] == 401
    admin = admin_token(stack)
    body = json.dumps({"routes": ["densenet161"], "scopes": ["inference"]}).encode()
    status, _, made = request(
        port, "/v1/tokens", "POST", {**bearer(admin), "Content-Type": "application/json"}, body
    )
    assert status == 201
    secret = json.loads(made)["token"]
    assert model_status(stack, secret) == 200
    token_id = json.loads(made)["id"]
    assert (
        request(port, f"/v1/tokens/{token_id}", "DELETE", bearer(admin))[0] == 200
    )  # (no replica: said)
    assert model_status(stack, secret) == 401


def test_failed_logins_are_limited_per_client_behind_envoy(stack: Stack) -> None:
    """Envoy names the client in X-Forwarded-For and the admin trusts only Envoy for it: one
    client's failures do not lock out another, and a client cannot name somebody else."""
    port = stack.ports.console.port

    def attempt(source: str, spoof: str | None = None) -> int:
        headers = bearer("eat_wrong")
        if spoof is not None:
            headers["X-Forwarded-For"] = spoof
        return request(port, "/v1/tokens", headers=headers, source=source)[0]

    codes = [attempt("127.0.0.2") for _ in range(FAILURE_BURST + 3)]
    assert codes[:FAILURE_BURST] == [401] * FAILURE_BURST and codes[-1] == 429
    assert attempt("127.0.0.2", spoof="203.0.113.9") == 429  # naming another client: no
    assert attempt("127.0.0.3") == 401  # another client: unaffected
    admin = admin_token(stack)
    assert request(port, "/v1/tokens", headers=bearer(admin), source="127.0.0.4")[0] == 200


# --- the console in a real browser --------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            message = f"{binary} missing (apt-get install chromium chromium-driver; CI does)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1360,1000", f"--user-data-dir={tmp_path / 'c'}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "c", ignore_errors=True)


class Page:
    """The console as a user sees it: find, type, click, wait."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def __call__(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def wait(self, check: Any, what: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = check()
            except Exception:
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; page: {self('body').text[:2000]}")

    def text(self, css: str) -> str:
        return str(self(css).text)

    def row(self, token_id: str) -> Any:
        return self(f'#tokens-body tr[data-id="{token_id}"]')

    def type(self, css: str, text: str) -> None:
        field = self(css)
        field.clear()
        field.send_keys(text)


def test_console_login_create_copy_rotate_revoke(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.keys import Keys

    page = Page(browser)
    console = stack.console_url
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {
            "origin": console.rstrip("/"),
            "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
        },
    )
    browser.get(console)
    # a bad token: told so, still signed out, nothing kept
    page.type("#login-token", "eat_not_a_real_token" + Keys.ENTER)
    page.wait(lambda: "not valid" in page.text("#login-error"), "the login error")
    assert browser.execute_script("return sessionStorage.length") == 0
    # the admin token: signed in, kept in sessionStorage only, no cookie
    admin = admin_token(stack)
    page.type("#login-token", admin + Keys.ENTER)
    page.wait(lambda: page("#app").is_displayed(), "the signed-in console")
    assert browser.execute_script("return sessionStorage.getItem('extauthz.token')") == admin
    assert browser.get_cookies() == [] and browser.execute_script("return document.cookie") == ""
    page.wait(lambda: "token" in page.text("#tokens-status"), "the token list")

    # create, from the keyboard: n opens the dialog, Tab moves, Enter submits
    page("body").send_keys("n")
    page.wait(lambda: page("#create-dialog").is_displayed(), "the create dialog")
    assert browser.switch_to.active_element == page("#create-name")
    page("#create-name").send_keys(
        "iris classifier", Keys.TAB, "densenet161", Keys.TAB, "inference"
    )
    page.type("#create-ttl", "7d")
    page("#create-rate").send_keys("600/m", Keys.ENTER)
    page.wait(lambda: page("#secret-dialog").is_displayed(), "the secret")
    assert "you will not see it again" in page.text("#secret-warning")
    secret = page("#secret-value").get_attribute("value")
    token_id = page.text("#secret-id")
    assert secret.startswith("eat_") and token_id
    page("#secret-copy").click()
    page.wait(lambda: "Copied" in page.text("#secret-copied"), "the copy confirmation")
    copied = browser.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], e => arguments[0]('error: ' + e))"
    )
    assert copied == secret
    assert model_status(stack, secret) == 200  # through the real Envoy, at once
    page("#secret-dialog [data-close]").click()
    assert page("#secret-value").get_attribute("value") == ""  # not left in the page
    page.wait(lambda: page.row(token_id), "the new row")
    assert "iris classifier" in page.row(token_id).text and "600/m" not in secret

    # usage: a few requests, then the chart
    for _ in range(3):
        assert model_status(stack, secret) == 200
    # usage reaches Redis at the server's next flush (its policy poll, each second)
    wait_for(
        lambda: tokens.usage(stack.store(), token_id, 1, time.time())["days"][0]["allowed"] == 4,
        10,
        "the usage flush",
    )
    page.row(token_id).find_element("css selector", "button[aria-label^='Usage']").click()
    page.wait(lambda: "4 allowed" in page.text("#usage-summary"), "the usage summary")
    bars = browser.find_elements("css selector", "#usage-chart svg g.day")
    assert len(bars) == 14
    assert "4 allowed" in bars[-1].find_element("css selector", "title").get_attribute(
        "textContent"
    )
    screenshot = tmp_path / "console.png"
    browser.save_screenshot(str(screenshot))
    if os.environ.get("EXTAUTHZ_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["EXTAUTHZ_SCREENSHOT"])

    # rotate with no grace: the old secret stops, the new one works
    page.row(token_id).find_element("css selector", "button[aria-label^='Rotate']").click()
    page.wait(lambda: page("#rotate-dialog").is_displayed(), "the rotate dialog")
    page("#rotate-grace").clear()
    page("#rotate-grace").send_keys(Keys.ENTER)
    page.wait(lambda: page("#secret-dialog").is_displayed(), "the rotated secret")
    rotated = page("#secret-value").get_attribute("value")
    assert rotated.startswith("eat_") and rotated != secret
    page("#secret-dialog").send_keys(Keys.ESCAPE)
    assert model_status(stack, rotated) == 200
    assert model_status(stack, secret) == 401

    # revoke: asks first; Cancel keeps it, Revoke ends it
    revoke = page.row(token_id).find_element("css selector", "button[aria-label^='Revoke']")
    revoke.click()
    page.wait(lambda: page("#revoke-dialog").is_displayed(), "the confirmation")
    page("#revoke-dialog [data-close]").click()
    assert model_status(stack, rotated) == 200
    page.row(token_id).find_element("css selector", "button[aria-label^='Revoke']").click()
    page.wait(lambda: page("#revoke-dialog").is_displayed(), "the confirmation")
    page("#revoke-form button.danger").click()
    page.wait(lambda: f"Revoked {token_id}" in page.text("#notice"), "the revocation")
    assert model_status(stack, rotated) == 401
    page.wait(lambda: not browser.find_elements("css selector", f'tr[data-id="{token_id}"]'), "row")

    # the audit tail shows each action, by the admin token's id
    page("#audit-refresh").click()
    admin_id = stack.store().token_record(token_hash(admin)).id  # type: ignore[union-attr]

    def audited() -> bool:
        rows = [r.text for r in browser.find_elements("css selector", "#audit-body tr")]
        actions = {a for a in ("token.create", "token.rotate", "token.revoke")
                   if any(a in r and token_id in r and admin_id in r for r in rows)}  # fmt: skip
        return len(actions) == 3

    page.wait(audited, "the audit rows")
    assert secret not in page.text("#audit-body") and rotated not in page.text("#audit-body")
    # no script errors and no CSP violation (the bad login's 401 is the one network error)
    log = browser.get_log("browser")
    errors = [e for e in log if e["level"] == "SEVERE" and e["source"] != "network"]
    assert [e for e in log if e["source"] == "network"] != []  # the log is read at all
    assert errors == [], errors
    # signing out forgets the token
    page("#sign-out").click()
    assert browser.execute_script("return sessionStorage.length") == 0
    assert page("#login").is_displayed()


def test_the_create_dialog_says_what_a_route_needs(stack: Stack, browser: Any) -> None:
    """A new user picks a route that needs a scope; the dialog says so and offers it, and the
    token made with it gets 200 through the real Envoy (without: 403)."""
    page = Page(browser)
    browser.get(stack.console_url)
    page.type("#login-token", admin_token(stack) + "\n")
    page.wait(lambda: page("#app").is_displayed(), "the signed-in console")
    page("#new-token").click()
    page.wait(lambda: page("#create-dialog").is_displayed(), "the create dialog")
    page.wait(lambda: browser.find_elements("css selector", "#route-names option"), "routes")
    names = [
        o.get_attribute("value")
        for o in browser.find_elements("css selector", "#route-names option")
    ]
    assert "densenet161" in names and "deployment-a" in names
    page.type("#create-routes", "densenet161, deployment-a, nope")
    page.wait(lambda: "densenet161: needs one of" in page.text("#create-needs"), "the needs")
    needs = page.text("#create-needs")
    assert "deployment-a: any scope" in needs and "nope: not a published route" in needs
    page('#create-needs button[data-scope="inference"]').click()
    assert page("#create-scopes").get_attribute("value") == "inference"
    page.wait(lambda: "inference ✓" in page.text("#create-needs"), "the scope marked as there")
    page.type("#create-routes", "densenet161")
    page("#create-form button[type=submit]").click()
    page.wait(lambda: page("#secret-dialog").is_displayed(), "the secret")
    secret = page("#secret-value").get_attribute("value")
    assert model_status(stack, secret) == 200
    without = tokens.create(stack.store(), ["densenet161"], now=time.time()).token
    assert model_status(stack, without) == 403  # what the hint saves a user from


def test_the_create_dialog_picks_llm_models(stack: Stack, browser: Any) -> None:
    """The dialog offers the LLM route's models; the token made with one gets 200 for it and
    403 for the other through the real Envoy."""
    page = Page(browser)
    browser.get(stack.console_url)
    page.type("#login-token", admin_token(stack) + "\n")
    page.wait(lambda: page("#app").is_displayed(), "the signed-in console")
    page("#new-token").click()
    page.wait(lambda: browser.find_elements("css selector", "#route-names option"), "routes")
    page.type("#create-routes", "llm")
    page.wait(lambda: "LLM models" in page.text("#create-needs"), "the model picker")
    page('#create-needs button[data-model="demo-small"]').click()
    assert page("#create-models").get_attribute("value") == "demo-small"
    page("#create-form button[type=submit]").click()
    page.wait(lambda: page("#secret-dialog").is_displayed(), "the secret")
    secret = page("#secret-value").get_attribute("value")

    assert chat(stack, secret, "demo-small") == 200 and chat(stack, secret, "demo-large") == 403
    page("#secret-dialog [data-close]").click()
    page.wait(lambda: "model:demo-small" in page.text("#tokens-body"), "the model in the list")


def test_console_shows_names_as_text_never_markup(stack: Stack, browser: Any) -> None:
    """A token name is user input: it reaches the page as text."""
    store = stack.store()
    hostile = '<img src=x onerror="window.pwned=1">'
    tokens.create(store, ["deployment-a"], name=hostile, now=time.time())
    page = Page(browser)
    browser.get(stack.console_url)
    page.type("#login-token", admin_token(stack) + "\n")
    page.wait(lambda: hostile in page.text("#tokens-body"), "the hostile name, as text")
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.find_elements("css selector", "#tokens-body img") == []


def test_console_signs_out_when_its_token_is_revoked(stack: Stack, browser: Any) -> None:
    admin = admin_token(stack)
    page = Page(browser)
    browser.get(stack.console_url)
    page.type("#login-token", admin + "\n")
    page.wait(lambda: page("#app").is_displayed(), "the signed-in console")
    page.wait(lambda: "Signed in ·" in page.text("#session-label"), "the caller's role")
    token_id = stack.store().token_record(token_hash(admin)).id  # type: ignore[union-attr]
    tokens.revoke(stack.store(), token_id)
    # (a script's click: a request of the console's own, still in flight, may sign it out first)
    browser.execute_script("document.getElementById('audit-refresh').click()")
    page.wait(lambda: page("#login").is_displayed(), "the sign-in form")
    assert "refused" in page.text("#login-error")
    assert browser.execute_script("return sessionStorage.length") == 0


# --- teams ----------------------------------------------------------------------------------


def sign_in(stack: Stack, browser: Any, token: str, hash_: str = "") -> Page:
    page = Page(browser)
    browser.get(stack.console_url + hash_)
    page.type("#login-token", token + "\n")
    page.wait(lambda: page("#app").is_displayed(), "the signed-in console")
    page.wait(lambda: "Signed in ·" in page.text("#session-label"), "the caller's role")
    return page


def elements(browser: Any, css: str) -> list[Any]:
    return list(browser.find_elements("css selector", css))


def test_console_teams_create_member_usage_edit_delete(stack: Stack, browser: Any) -> None:
    """An admin makes a team on the Teams page, a token in it from the create dialog (used
    through the real Envoy), sees it among the team's members and the team's usage per
    model, edits the team and deletes it (refused with its token, then with it revoked)."""
    from selenium.webdriver.support.select import Select

    page = sign_in(stack, browser, admin_token(stack))
    page('#nav a[href="#teams"]').click()
    page.wait(lambda: page("#view-teams").is_displayed(), "the Teams page")
    assert not page("#view-tokens").is_displayed()
    page("#new-team").click()
    page.wait(lambda: page("#team-dialog").is_displayed(), "the team dialog")
    page.type("#team-id", "Not An Id")
    page("#team-form button[type=submit]").click()
    page.wait(lambda: "team" in page.text("#team-error"), "the refusal")  # (the API's 400)
    page.type("#team-id", "acme")
    page.type("#team-name", "Acme Corp")
    page.type("#team-models", "demo-small")
    page.type("#team-rate", "600/m")
    page.type("#team-token-limit", "1000000/d")
    page.type("#team-budget", "500/mo")
    page("#team-form button[type=submit]").click()
    page.wait(lambda: "Team Acme Corp · acme" in page.text("#team-title"), "the team's page")
    assert browser.execute_script("return location.hash") == "#teams/acme"
    assert "600/m" in page.text("#team-facts") and "demo-small" in page.text("#team-facts")
    assert "Budget\n$500/mo" in page.text("#team-facts")
    row = page.wait(lambda: page('#teams-body tr[data-id="acme"]'), "the team's row")
    assert "Acme Corp" in row.text and "1000000/d" in row.text

    # a token in the team, from the create dialog; it works through the real Envoy
    page('#nav a[href="#tokens"]').click()
    page("#new-token").click()
    page.wait(lambda: page("#create-dialog").is_displayed(), "the create dialog")
    team_select = Select(page("#create-team"))
    assert [o.get_attribute("value") for o in team_select.options][:1] == [""]  # (no team)
    team_select.select_by_value("acme")
    page.type("#create-name", "acme bot")
    page.type("#create-routes", "llm")
    page("#create-form button[type=submit]").click()
    page.wait(lambda: page("#secret-dialog").is_displayed(), "the secret")
    secret = page("#secret-value").get_attribute("value")
    token_id = page.text("#secret-id")
    assert stack.store().token_record(token_hash(secret)).team == "acme"  # type: ignore[union-attr]
    page("#secret-dialog [data-close]").click()
    assert [chat(stack, secret, "demo-small") for _ in range(2)] == [200, 200]
    assert chat(stack, secret, "demo-large") == 403  # (the team's models)
    page.wait(lambda: "acme" in page.row(token_id).text, "the team in the token list")

    def counted() -> bool:
        today = tokens.usage(stack.store(), token_id, 1, time.time())["days"][0]
        return bool(today.get("models", {}).get("demo-small", {}).get("requests") == 2)

    wait_for(counted, 10, "the usage flush")
    # the token's page: its team, its usage per model
    page.row(token_id).find_element("css selector", "button[aria-label^='Usage']").click()
    page.wait(lambda: "Team\nacme" in page.text("#usage-facts"), "the token's team")
    page.wait(lambda: elements(browser, '#usage-models .model[data-model="demo-small"]'), "split")
    assert "2 requests" in page.text('#usage-models .model[data-model="demo-small"] h4')
    # what they cost (demo-small is priced in the example policy; the team has a budget)
    page.wait(lambda: elements(browser, '#usage-chart svg[data-chart="spend"]'), "the spend")
    assert "Spend · $0.0" in page.text("#usage-chart")

    # its team's page: the member, and the usage chart per model and day
    page.row(token_id).find_element("css selector", "td a").click()  # (the team's link)
    page.wait(lambda: page("#view-teams").is_displayed(), "the Teams page")
    page.wait(lambda: page(f'#members-body tr[data-id="{token_id}"]'), "the member")
    assert "acme bot" in page.text("#members-body")
    page.wait(lambda: "1 token" in page.text("#team-usage-summary"), "the team's usage")
    page.wait(lambda: elements(browser, '#team-chart svg[data-chart="spend"]'), "its spend")
    chart = '#team-chart .model[data-model="demo-small"]'
    days = elements(browser, f'{chart} g.day[data-model="demo-small"]')
    assert len(days) == 2 * 7  # (requests and LLM tokens, per day)
    last = days[6].find_element("css selector", "title").get_attribute("textContent")
    assert last.endswith(": 2 requests"), last
    Select(page("#team-days")).select_by_visible_text("30")
    page.wait(lambda: len(elements(browser, f"{chart} g.day")) == 2 * 30, "30 days")
    assert "30 days" in page.text("#team-usage-summary")

    # edit: a new name, its request limit removed
    page('#team-actions button[aria-label="Edit team acme"]').click()
    page.wait(lambda: page("#team-dialog").is_displayed(), "the team dialog")
    assert page("#team-rate").get_attribute("value") == "600/m"
    assert not page("#team-id").is_enabled()
    page.type("#team-name", "Acme Industries")
    page("#team-rate").clear()
    page("#team-form button[type=submit]").click()
    page.wait(lambda: "Acme Industries" in page.text("#team-title"), "the new name")
    page.wait(lambda: "Request limit\nnone" in page.text("#team-facts"), "the limit removed")
    shown = teams.show(stack.store(), "acme")
    assert (shown.name, shown.rate_limit, str(shown.token_limit), str(shown.budget)) == (
        "Acme Industries",
        None,
        "1000000/d",
        "$500/mo",  # (kept as it was)
    )

    # delete: asks first; with a token it says the API's 409, then revokes it with the team
    page('#team-actions button[aria-label="Delete team acme"]').click()
    page.wait(lambda: page("#delete-team-dialog").is_displayed(), "the confirmation")
    assert page("#delete-team-choice").is_displayed() and "1 token" in page.text(
        "#delete-team-choice"
    )
    page("#delete-team-form button.danger").click()
    page.wait(lambda: "revoke_tokens" in page.text("#delete-team-error"), "the 409 message")
    assert chat(stack, secret, "demo-small") == 200  # (nothing happened)
    page("#delete-team-revoke").click()
    page("#delete-team-form button.danger").click()
    page.wait(lambda: "Deleted team acme" in page.text("#teams-notice"), "the deletion")
    page.wait(lambda: not elements(browser, '#teams-body tr[data-id="acme"]'), "the row gone")
    assert not page("#team").is_displayed()
    assert chat(stack, secret, "demo-small") == 401
    log = browser.get_log("browser")
    assert [e for e in log if e["level"] == "SEVERE" and e["source"] != "network"] == []


def test_a_team_manager_sees_its_team_only_and_read_only(stack: Stack, browser: Any) -> None:
    store, now = stack.store(), time.time()
    for team in ("mgr-a", "mgr-b"):
        teams.create(store, team, name=f"Team {team}", now=now)
    lead = tokens.create(store, ["llm"], ["tokens:manage"], 3600, now=now, team="mgr-a")
    ours = tokens.create(store, ["llm"], [], 600, name="ours", now=now, team="mgr-a")
    theirs = tokens.create(store, ["llm"], [], 600, name="theirs", now=now, team="mgr-b")

    page = sign_in(stack, browser, lead.token, "#teams")
    assert "manager of team mgr-a" in page.text("#session-label")
    page.wait(lambda: elements(browser, "#teams-body tr[data-id]"), "the teams")
    assert [r.get_attribute("data-id") for r in elements(browser, "#teams-body tr")] == ["mgr-a"]
    assert not page("#new-team").is_displayed()
    assert elements(browser, "#teams-body button") == []  # (no Edit, no Delete)
    page('#teams-body a[aria-label="Open team mgr-a"]').click()
    page.wait(lambda: page(f'#members-body tr[data-id="{ours.record.id}"]'), "its member")
    assert theirs.record.id not in page.text("#members-body")
    assert elements(browser, "#team-actions button") == []
    page("body").send_keys("n")  # (the shortcut makes no team either)
    assert not page("#team-dialog").is_displayed()
    # another team: does not exist for it
    browser.execute_script("location.hash = '#teams/mgr-b'")
    page.wait(lambda: "no team with id 'mgr-b'" in page.text("#members-status"), "the 404")
    assert "Team mgr-b" not in page.text("#teams-body")
    # its tokens are made in its team: the dialog's choice is fixed to it
    page('#nav a[href="#tokens"]').click()
    page("#new-token").click()
    page.wait(lambda: page("#create-dialog").is_displayed(), "the create dialog")
    choice = page("#create-team")
    options = [o.get_attribute("value") for o in choice.find_elements("css selector", "option")]
    assert options == ["mgr-a"] and not choice.is_enabled()
    page.type("#create-routes", "llm")
    page.type("#create-ttl", "10m")  # (within its own expiry)
    page("#create-form button[type=submit]").click()
    page.wait(lambda: page("#secret-dialog").is_displayed(), "the secret")
    made = stack.store().token_record(token_hash(page("#secret-value").get_attribute("value")))
    assert made is not None and made.team == "mgr-a"
    # and the API refuses it a change to its team, whatever a page would send
    body = json.dumps({"name": "x"}).encode()
    headers = {**bearer(lead.token), "Content-Type": "application/json"}
    assert request(stack.ports.console.port, "/v1/teams/mgr-a", "PATCH", headers, body)[0] == 403


def test_console_shows_team_and_model_names_as_text(stack: Stack, browser: Any) -> None:
    """A team's name and a model's name (the caller's request named it) are user input:
    on the Teams page, the team's page, its usage chart and the create dialog they are text."""

    store, now = stack.store(), time.time()
    name = '<img src=x onerror="window.pwned=1">'
    model = "<img/src=x/onerror=window.pwned=2>"
    teams.create(store, "hostile", name=name, models=[model], now=now)
    member = tokens.create(store, ["llm"], name=name, now=now, team="hostile").record.id
    today = int(now // 86400)
    charged = [5] + [0] * (len(TOKEN_KINDS) - 1)
    store.add_usage(
        "console-hostile", {(member, today): [3, 0]}, 2,
        models={(member, today, model): 3}, tokens={(member, today, model): charged},
    )  # fmt: skip
    page = sign_in(stack, browser, admin_token(stack), "#teams/hostile")
    page.wait(lambda: name in page.text("#team-title"), "the name, as text")
    page.wait(lambda: elements(browser, "#team-chart .model g.day"), "the chart")
    assert page("#team-chart .model").get_attribute("data-model") == model
    assert model in page.text("#team-chart") and model in page.text("#team-facts")
    assert name in page.text("#teams-body") and name in page.text("#members-body")
    page('#nav a[href="#tokens"]').click()
    page("#new-token").click()
    page.wait(lambda: name in page("#create-team").get_attribute("textContent"), "the option")
    assert browser.execute_script("return window.pwned === undefined")
    assert elements(browser, "img") == []
