"""Drives the web console at /ui in Debian's headless Chromium with Playwright (the Python
package, pointed at /usr/bin/chromium; no browser download), against a running Lowart.

Covers: the served CSP and headers; the first load's transferred bytes (< 300 KB); a bad
key shows an error; signing in with the admin key; creating a user and a key (the secret
shown once, gone after closing); creating a deployment and holding its breaker open; a
streamed chat in the playground whose usage row then appears on the monitoring page; a
tool call waiting for confirmation that arrives live over the agent bus and is approved
in one click; signing in with the new `user` key and seeing only that user's data. Fails
on any browser console error or page error that the step did not expect. Screenshots of
every page go to LOWART_SHOTS.

Usage: LOWART_URL=http://127.0.0.1:PORT LOWART_KEY=<admin key> LOWART_SHOTS=/tmp/shots \
    MCP_TIME=/path/to/mcp-server-time python ui_check.py
"""

import json
import os
import re
import secrets
import threading
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

URL = os.environ["LOWART_URL"].rstrip("/")
KEY = os.environ["LOWART_KEY"]
SHOTS = os.environ["LOWART_SHOTS"]
TIME = os.environ["MCP_TIME"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 20_000
SUFFIX = secrets.token_hex(3)


def api(method, path, body=None, key=KEY):
    request = urllib.request.Request(
        URL + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read() or b"null")


class Console:
    """Collects console errors and page errors; a step may allow some it causes on purpose
    (the browser logs every 4xx answer to fetch as a console error)."""

    def __init__(self):
        self.errors = []
        self.allowed = []  # (status, path regex)

    def on_console(self, msg):
        if msg.type != "error":
            return
        text = msg.text
        url = (msg.location or {}).get("url", "")
        for status, path in self.allowed:
            if f"status of {status}" in text and re.search(path, url):
                return
        self.errors.append(f"console: {text} ({url})")

    def on_pageerror(self, err):
        self.errors.append(f"pageerror: {err}")

    def check(self, step):
        assert not self.errors, f"{step}: browser errors: {self.errors}"


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def check_headers():
    with urllib.request.urlopen(URL + "/ui", timeout=30) as r:
        html = r.read().decode()
        csp = r.headers["Content-Security-Policy"] or ""
        assert r.headers["Cache-Control"] == "no-cache", r.headers["Cache-Control"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    directives = dict(
        (d.strip().split(" ", 1) + [""])[:2] for d in csp.split(";") if d.strip()
    )
    assert "script-src" in directives, csp
    assert "unsafe-inline" not in directives["script-src"], csp
    assert "unsafe-eval" not in directives["script-src"], csp
    assert directives.get("default-src") == "'none'", csp
    assets = re.findall(r'(?:src|href)="(/ui/[^"]+)"', html)
    assert assets and all(a.startswith("/ui/assets/") for a in assets), assets
    for a in assets:
        with urllib.request.urlopen(URL + a, timeout=30) as r:
            assert "immutable" in (r.headers["Cache-Control"] or ""), (a, r.headers["Cache-Control"])
            assert r.headers["Content-Security-Policy"], a
    assert "<script>" not in html and "onclick=" not in html and "style=" not in html
    print(f"ui: /ui headers and CSP ok ({len(assets)} hashed assets): {csp}")


def first_load_bytes(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    total = {"bytes": 0, "requests": 0, "urls": []}

    def finished(ev):
        total["bytes"] += ev["encodedDataLength"]
        total["requests"] += 1

    cdp.on("Network.loadingFinished", finished)
    page.on("request", lambda r: total["urls"].append(r.url))
    page.goto(URL + "/ui", wait_until="networkidle")
    expect(page.locator("#signin-key")).to_be_visible()
    context.close()
    off_origin = [u for u in total["urls"] if not u.startswith(URL)]
    assert not off_origin, off_origin
    assert total["bytes"] < 300_000, total
    print(f"ui: first load of /ui: {total['bytes']} bytes over {total['requests']} requests, all from the gateway")


def sign_in(page, key):
    page.fill("#signin-key", key)
    page.click("#signin-form button[type=submit]")


def main():
    expect.set_options(timeout=TIMEOUT_MS)
    os.makedirs(SHOTS, exist_ok=True)
    check_headers()
    _, server = api("POST", "/admin/mcp/register", {
        "name": f"uiclock{SUFFIX}", "command": TIME, "args": ["--local-timezone", "UTC"],
        "default_policy": "confirm",
    })
    mcp_name = server["name"]
    assert server["status"] == "running", server

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        first_load_bytes(browser)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        con = Console()
        page.on("console", con.on_console)
        page.on("pageerror", con.on_pageerror)
        page.goto(URL + "/ui")
        shot(page, "00-sign-in")

        # A bad key: an error message, not a blank page.
        con.allowed = [(401, r"/v1/usage")]
        sign_in(page, "lw-not-a-real-key-" + secrets.token_hex(8))
        expect(page.locator("#signin-error")).to_contain_text("not valid")
        expect(page.locator("#signin-form")).to_be_visible()
        shot(page, "01-bad-key")
        con.allowed = []
        con.check("bad key")
        print("ui: a bad key shows an error")

        # The admin key.
        sign_in(page, KEY)
        expect(page.locator("#who")).to_contain_text("admin")
        expect(page.locator("#page-title")).to_have_text("My usage")
        assert page.evaluate("document.cookie") == ""
        assert KEY not in page.url
        shot(page, "02-overview-admin")
        con.check("admin sign-in")
        print("ui: signed in with the admin key")

        # A user and a key; the secret is shown once.
        user_id = f"ui-user-{SUFFIX}"
        page.click("nav a[data-page=users]")
        page.fill("#nu-id", user_id)
        page.fill("#nu-name", "Console test user")
        page.select_option("#nu-role", "user")
        page.fill("#nu-rpm_limit", "100")
        page.click("#new-user button[type=submit]")
        row = page.locator("tr", has=page.locator(f"code:text-is('{user_id}')"))
        expect(row).to_be_visible()
        row.get_by_role("button", name=f"New key for {user_id}").click()
        page.locator(f"#new-key-{user_id} input[name=name]").fill("console")
        page.locator(f"#new-key-{user_id} button[type=submit]").click()
        secret_el = page.locator("#new-key-secret")
        expect(secret_el).to_be_visible()
        user_key = secret_el.inner_text().strip()
        assert user_key.startswith("lw-") or len(user_key) > 20, user_key
        shot(page, "03-key-secret-once")
        page.click("#secret-close")
        expect(page.locator("#new-key-secret")).to_have_count(0)
        assert user_key not in page.content()
        _, keys = api("GET", f"/admin/keys?user_id={user_id}")
        assert len(keys["data"]) == 1 and keys["data"][0]["name"] == "console", keys
        # Limits, and revoking a key (a spare one made through the API).
        row.get_by_role("button", name=f"Limits of {user_id}").click()
        page.fill(f"#lim-{user_id}-tpm_limit", "50000")
        page.locator(f"#lim-{user_id}-tpm_limit").press("Enter")
        expect(row.locator("td").nth(4)).to_have_text("50,000")
        _, user = api("GET", f"/admin/users/{user_id}")
        assert user["tpm_limit"] == 50000 and user["rpm_limit"] == 100, user
        _, spare = api("POST", "/admin/keys", {"user_id": user_id, "name": "spare"})
        page.click("nav a[data-page=overview]")
        page.click("nav a[data-page=users]")
        page.once("dialog", lambda d: d.accept())
        page.get_by_role("button", name=f"Revoke key {spare['id']}").click()
        spare_row = page.locator("tr", has=page.locator(f"code:text-is('{spare['id']}')"))
        expect(spare_row).to_contain_text("revoked")
        shot(page, "04-users-keys")
        con.check("users")
        print(f"ui: created user {user_id} and a key (its secret shown once), set a limit, revoked a key")

        # A deployment, created here, and its breaker held open.
        model_id = f"ui-mock-{SUFFIX}"
        page.click("nav a[data-page=models]")
        page.fill("#new-model input[name=model_id]", model_id)
        page.select_option("#new-model select[name=vendor_type]", "Mock")
        page.fill("#new-model input[name=weight]", "2")
        page.fill("#new-model input[name=price_input_per_mtok]", "1.5")
        page.fill("#new-model input[name=price_output_per_mtok]", "3")
        page.click("#new-model button[type=submit]")
        dep_row = page.locator("#deployments tr", has=page.locator(f"td:text-is('{model_id}')"))
        expect(dep_row).to_be_visible()
        dep_id = dep_row.locator("code").first.inner_text()
        page.get_by_role("button", name=f"Hold open breaker of {dep_id}").click()
        expect(page.locator(f"[data-breaker='{dep_id}']")).to_have_text("open (held)")
        _, breakers = api("GET", "/admin/breakers")
        held = [b for b in breakers["data"] if b["deployment_id"] == dep_id]
        assert held and held[0]["state"] == "open" and held[0]["forced"], held
        shot(page, "05-models-breaker-held")
        page.get_by_role("button", name=f"Hold closed breaker of {dep_id}").click()
        expect(page.locator(f"[data-breaker='{dep_id}']")).to_have_text("closed (held)")
        page.get_by_role("button", name=f"Release breaker of {dep_id}").click()
        expect(page.locator(f"[data-breaker='{dep_id}']")).to_have_text("closed")
        _, breakers = api("GET", "/admin/breakers")
        released = [b for b in breakers["data"] if b["deployment_id"] == dep_id]
        assert released and released[0]["state"] == "closed" and not released[0]["forced"], released
        page.get_by_role("button", name=f"Edit {dep_id}").click()
        page.fill("#edit-deployment input[name=weight]", "3")
        page.locator("#edit-deployment input[name=weight]").press("Enter")
        expect(dep_row.locator("td").nth(4)).to_have_text("3")
        _, deps = api("GET", "/admin/models")
        assert [d["weight"] for d in deps["data"] if d["id"] == dep_id] == [3], deps
        con.check("models")
        print(f"ui: created deployment {dep_id}, held its breaker open, then closed, then released it; edited its weight")

        # Playground: a streamed chat; then its usage row on the monitoring page.
        streamed = {}
        page.on("response", lambda r: r.url.endswith("/v1/chat/completions") and streamed.setdefault(
            "type", r.headers.get("content-type", "")))
        page.click("nav a[data-page=playground]")
        page.select_option("#pg-model", model_id)
        page.check("#pg-compare")
        page.select_option("#pg-model2", "mock")
        prompt = f"Hello from the console {SUFFIX}"
        page.fill("#pg-prompt", prompt)
        page.click("#pg-send")
        for m in (model_id, "mock"):
            expect(page.locator(f".answer[data-model='{m}']")).to_have_text(prompt)
        pane = page.locator("section", has=page.locator(f".answer[data-model='{model_id}']"))
        expect(pane.locator("[data-stat=deployment]")).to_have_text(dep_id)
        expect(pane.locator("[data-stat=cost]")).to_contain_text("$")
        request_id = pane.locator("[data-stat='request id']").inner_text()
        assert "text/event-stream" in streamed.get("type", ""), streamed
        tokens = pane.locator("[data-stat='completion tokens']").inner_text()
        assert tokens not in ("", "—"), tokens
        shot(page, "06-playground")
        page.click("nav a[data-page=monitor]")
        expect(page.locator(f"[data-request='{request_id}']")).to_be_visible()
        expect(page.locator(".uplot").first).to_be_visible()
        page.wait_for_timeout(3500)  # a second live poll: the in-flight chart has points
        shot(page, "07-monitoring")
        con.check("playground and monitoring")
        print(f"ui: streamed a chat in the playground (two models side by side); row {request_id} appeared in monitoring")

        # A tool call waiting for confirmation arrives live; approve it in one click.
        page.click("nav a[data-page=approvals]")
        expect(page.locator("#bus-status")).to_have_text("Agent bus: live")
        answer = {}

        def held_chat():
            _, answer["body"] = api("POST", "/v1/chat/completions", {
                "model": "mock",
                "messages": [{"role": "user", "content": "what time is it?"}],
                "tool_choice": {"type": "function", "function": {"name": f"{mcp_name}__get_current_time"}},
                "mcp_servers": [mcp_name],
            })

        t = threading.Thread(target=held_chat)
        t.start()
        t.join(30)
        body = answer["body"]
        assert body.get("status") == "require_confirmation", body
        session_id = body["session_id"]
        card = page.locator(f"article[data-session='{session_id}']")
        expect(card).to_be_visible()
        expect(card).to_contain_text(f"{mcp_name}__get_current_time")
        shot(page, "08-approval-pending")
        card.get_by_role("button", name="Approve").click()
        expect(card).to_have_count(0)
        expect(page.locator("#approvals-log")).to_contain_text(f"{session_id}: approved")
        _, sessions = api("GET", "/v1/tools/sessions")
        assert all(s["session_id"] != session_id for s in sessions["data"]), sessions
        # A second one, denied.
        held_chat()
        denied_id = answer["body"]["session_id"]
        assert denied_id != session_id
        denied = page.locator(f"article[data-session='{denied_id}']")
        denied.get_by_role("button", name="Deny").click()
        expect(denied).to_have_count(0)
        expect(page.locator("#approvals-log")).to_contain_text(f"{denied_id}: denied")
        shot(page, "09-approval-resolved")
        con.check("approvals")
        print(f"ui: session {session_id} arrived over the bus and was approved in one click; {denied_id} denied")

        # A tool's policy, changed from the MCP page.
        page.click("nav a[data-page=mcp]")
        page.select_option(f"select[aria-label='Policy of {mcp_name}/convert_time']", "block")
        expect(page.locator("#toast")).to_contain_text(f"{mcp_name}/convert_time: block")
        _, servers = api("GET", "/admin/mcp")
        tools = {t["name"]: t["policy"] for sv in servers["data"] if sv["name"] == mcp_name for t in sv["tools"]}
        assert tools == {"convert_time": "block", "get_current_time": "confirm"}, tools
        print("ui: a tool's policy set from the MCP page")

        # Scripts: the compiler's error inline, then a good script saved and tested.
        script = f"ui_brief_{SUFFIX}"
        page.click("nav a[data-page=scripts]")
        page.fill("#sc-name", script)
        page.fill("#sc-source", "fn on_request(req) { req.temperature = ; req }")
        con.allowed = [(400, r"/admin/scripts/")]  # the refused source
        page.click("#sc-save")
        expect(page.locator("#sc-error")).to_contain_text("line 1")
        shot(page, "10-scripts-compile-error")
        page.fill("#sc-source", "fn on_request(req) { req.temperature = 0.2; req }")
        page.click("#sc-save")
        expect(page.get_by_role("button", name=script)).to_be_visible()
        page.fill("#sc-input", '{"messages": []}')
        page.click("#sc-test")
        expect(page.locator("#sc-output")).to_contain_text('"temperature": 0.2')
        shot(page, "10-scripts-tested")
        con.allowed = []
        con.check("scripts")
        print(f"ui: script {script}: the compiler's error shown inline, then saved and tested")

        # Jobs: an async image job on the built-in mock shows with its progress.
        _, job = api("POST", "/v1/images/generations", {"model": "mock", "prompt": "a lighthouse", "async": True})
        page.click("nav a[data-page=jobs]")
        job_row = page.locator("tr", has=page.locator(f"code:text-is('{job['job_id']}')"))
        expect(job_row).to_be_visible()
        expect(job_row.locator("progress")).to_be_visible()
        print(f"ui: job {job['job_id']} listed with its progress")

        # A passthrough route added and deleted.
        prefix = f"/ui-route-{SUFFIX}"
        page.click("nav a[data-page=routes]")
        page.fill("#new-route input[name=prefix]", prefix)
        page.fill("#new-route input[name=upstream]", "http://127.0.0.1:9")
        page.click("#new-route button[type=submit]")
        route_row = page.locator("tr", has=page.locator(f"code:text-is('{prefix}')"))
        expect(route_row).to_contain_text("admin")
        shot(page, "10-routes")
        page.once("dialog", lambda d: d.accept())
        route_row.get_by_role("button", name=f"Delete route {prefix}").click()
        expect(route_row).to_have_count(0)
        _, routes = api("GET", "/admin/routes")
        assert all(r["prefix"] != prefix for r in routes["data"]), routes
        con.check("routes")
        print(f"ui: route {prefix} added and deleted")

        # Every page, as the admin, at desktop width and in dark mode.
        for name in ("overview", "jobs", "mcp", "audit"):
            page.click(f"nav a[data-page={name}]")
            expect(page.locator("#page-title")).to_be_visible()
            page.wait_for_load_state("networkidle")
            expect(page.locator("#page .error:not(:empty)")).to_have_count(0)
            shot(page, f"10-{name}")
        expect(page.locator("main")).to_contain_text("model.create")  # audit
        page.emulate_media(color_scheme="dark")
        page.click("nav a[data-page=monitor]")
        page.wait_for_timeout(500)
        shot(page, "11-monitoring-dark")
        page.emulate_media(color_scheme="light")
        con.check("admin pages")

        # Keyboard: the sign-out button is reachable and works from the keyboard.
        page.focus("#signout")
        page.keyboard.press("Enter")
        expect(page.locator("#signin-key")).to_be_focused()
        assert page.evaluate("sessionStorage.length") == 0

        # A viewer: the staff pages, read-only.
        viewer_id = f"ui-viewer-{SUFFIX}"
        api("POST", "/admin/users", {"user_id": viewer_id, "role": "viewer"})
        _, vkey = api("POST", "/admin/keys", {"user_id": viewer_id})
        sign_in(page, vkey["key"])
        expect(page.locator("#who")).to_contain_text(f"{viewer_id} · viewer")
        page.click("nav a[data-page=users]")
        expect(page.locator("main")).to_contain_text(user_id)
        expect(page.locator("#new-user")).to_have_count(0)
        expect(page.get_by_role("button", name="Revoke")).to_have_count(0)
        page.click("nav a[data-page=models]")
        expect(page.locator(f"[data-breaker='{dep_id}']")).to_be_visible()
        expect(page.locator("#new-model")).to_have_count(0)
        expect(page.get_by_role("button", name=re.compile("Hold|Release|Edit|Delete"))).to_have_count(0)
        shot(page, "12-models-viewer")
        con.check("viewer")
        page.click("#signout")
        print("ui: a viewer sees the staff pages without a button that changes anything")

        # The user key: only that user's pages and data.
        con.allowed = [(403, r"/admin/users/")]
        sign_in(page, user_key)
        expect(page.locator("#who")).to_contain_text(f"{user_id} · user")
        con.allowed = []
        nav = page.locator("nav a").all_inner_texts()
        assert nav == ["My usage", "Monitoring", "Playground", "Jobs", "Approvals"], nav
        page.click("nav a[data-page=overview]")
        expect(page.locator("#page-title")).to_have_text("My usage")
        expect(page.locator("main")).to_contain_text(user_id)
        main_text = page.locator("main").inner_text()
        assert "Bootstrap administrator" not in main_text and "admin" not in main_text.split(user_id)[0], main_text
        shot(page, "12-overview-user")
        page.goto(URL + "/ui#/users")  # an admin page by address: the user gets their own
        expect(page.locator("#page-title")).to_have_text("My usage")
        page.click("nav a[data-page=playground]")
        expect(page.locator("#pg-model option[value=mock]")).to_have_count(1)
        page.fill("#pg-prompt", "hello as a user")
        page.click("#pg-send")
        expect(page.locator(".answer[data-model='mock']").first).to_have_text("hello as a user")
        for _ in range(100):  # usage rows are written in batches
            if api("GET", "/v1/usage", key=user_key)[1]["usage"]["key"]["all_time"]["requests"] >= 1:
                break
            page.wait_for_timeout(100)
        page.click("nav a[data-page=overview]")
        user_key_id = keys["data"][0]["id"]
        key_row = page.locator("tr", has=page.locator(f"code:text-is('{user_key_id}')"))
        expect(key_row).to_contain_text("active (this one)")
        expect(key_row.locator("td").nth(4)).to_have_text("1")  # the chat above
        expect(page.locator(f"code:text-is('{spare['id']}')")).to_be_visible()  # revoked, still theirs
        page.click("nav a[data-page=monitor]")
        page.select_option("#mon-by", "key")
        expect(page.locator("table code", has_text=user_key_id)).to_be_visible()
        expect(page.locator(".uplot").first).to_be_visible()
        main_text = page.locator("main").inner_text()
        admin_key_ids = [k["id"] for k in api("GET", "/admin/keys?user_id=admin")[1]["data"]]
        assert not any(k in main_text for k in admin_key_ids), main_text
        shot(page, "13-monitoring-user")
        page.click("nav a[data-page=approvals]")
        shot(page, "14-approvals-user")
        page.set_viewport_size({"width": 390, "height": 844})
        page.click("nav a[data-page=overview]")
        shot(page, "15-overview-phone")
        page.click("nav a[data-page=playground]")
        shot(page, "16-playground-phone")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at phone width: {width}px"
        con.check("user")
        print(f"ui: the user key sees only {user_id}'s pages and data; phone width fits")

        browser.close()
    # Leave the gateway as the other checks expect it: no extra model, no extra MCP server.
    api("DELETE", f"/admin/models/{dep_id}")
    api("DELETE", f"/admin/mcp/{mcp_name}")
    print(f"ui: console checks passed; screenshots in {SHOTS}")


if __name__ == "__main__":
    try:
        main()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"ui: {e.code} {e.read()[:500]!r}") from None
