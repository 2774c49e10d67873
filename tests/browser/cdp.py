"""Drive headless Chromium through the DevTools protocol, as a user would: open a page,
click a real mouse at an element's place, watch a page change. The view tests call it
(`--dump-dom` only loads a page; clicking and waiting need the protocol).

    cdp.py click URL SELECTOR    open URL, click the centre of the first SELECTOR, wait for
                                 the page it leads to; print JSON {clicked, url, rows}
    cdp.py watch URL SELECTOR N  open URL, print JSON {before, after}: the text of SELECTOR
                                 at load and N seconds later (no reload)

Uses websocket-client (PyPI), installed by scripts/setup.sh into the test venv.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket


class Browser:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="caiflow-cdp-")
        self.proc = subprocess.Popen(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                "--window-size=1280,1600",
                f"--user-data-dir={self.dir}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = os.path.join(self.dir, "DevToolsActivePort")
        deadline = time.time() + 30
        while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
            if time.time() > deadline:
                raise SystemExit("chromium did not open its DevTools port in 30 s")
            time.sleep(0.1)
        port = open(port_file).read().split("\n")[0].strip()
        targets = []
        while not any(t.get("type") == "page" for t in targets):
            if time.time() > deadline:
                raise SystemExit("chromium has no page target")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.load(r)
            time.sleep(0.05)
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self.next_id = 0
        self.events = []
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method, **params):
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise SystemExit(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event, timeout=30):
        deadline = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == event:
                    del self.events[: i + 1]
                    return e
            if time.time() > deadline:
                raise SystemExit(f"no {event} in {timeout} s")
            self.ws.settimeout(max(0.1, deadline - time.time()))
            try:
                self.events.append(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:
                pass

    def open(self, url):
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise SystemExit(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait()


def click(browser, url, selector):
    browser.open(url)
    target = browser.evaluate(
        "(() => { const e = document.querySelector(%s); if (!e) return null;"
        " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
        " const a = e.closest('a');"
        " return {x: r.x + r.width / 2, y: r.y + r.height / 2, href: a && a.getAttribute('href')}; })()"
        % json.dumps(selector)
    )
    if target is None:
        raise SystemExit(f"no {selector} on {url}")
    # What a user's mouse would hit there: the link itself, not something drawn over it.
    hit = browser.evaluate(
        "(() => { const e = document.elementFromPoint(%f, %f); const a = e && e.closest('a');"
        " return a && a.getAttribute('href'); })()" % (target["x"], target["y"])
    )
    browser.events.clear()
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        browser.call(
            "Input.dispatchMouseEvent",
            type=kind,
            x=target["x"],
            y=target["y"],
            button="left",
            clickCount=1,
        )
    browser.wait_for("Page.loadEventFired")
    after = browser.evaluate("location.pathname + location.search")
    rows = browser.evaluate("document.querySelectorAll('.row').length")
    return {"clicked": target["href"], "hit": hit, "url": after, "rows": rows}


def watch(browser, url, selector, seconds):
    browser.open(url)
    text = "(() => { const e = document.querySelector(%s); return e && e.textContent; })()" % json.dumps(
        selector
    )
    before = browser.evaluate(text)
    time.sleep(seconds)
    return {"before": before, "after": browser.evaluate(text)}


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("click", "watch"):
        raise SystemExit(__doc__)
    browser = Browser()
    try:
        if sys.argv[1] == "click":
            out = click(browser, sys.argv[2], sys.argv[3])
        else:
            out = watch(browser, sys.argv[2], sys.argv[3], float(sys.argv[4]))
    finally:
        browser.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
