"""The viewer page: self-contained (no external asset, no token in any URL), and in a real headless
browser (Debian's chromium with chromedriver, driven over the W3C WebDriver HTTP API): phases, streams,
exit codes, the live follow updating while lines are stored, the filter box, and the token kept out of
the server's log."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from agg_helpers import JOB
from conftest import TEST_SECRET, free_port, wait_port
from shipper_helpers import JOB_ID as SHIPPER_JOB
from shipper_helpers import POD as SHIPPER_POD
from shipper_helpers import append, shipping

from aggregator.auth import job_token, read_token

VIEW = f"/v1/jobs/{JOB}/view"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = ("the browser test needs Debian's chromium and chromium-driver (chromium + chromedriver on PATH); "
              "add them to scripts/bootstrap.sh")


def script_of(page: str) -> str:
    found = re.search(r"<script>(.*)</script>", page, re.S)
    assert found is not None
    return found.group(1)


async def test_page_is_self_contained(serve: Any) -> None:
    client = await serve()
    r = await client.get(VIEW)
    page = await r.text()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["Referrer-Policy"] == "no-referrer"
    # No external asset: no src/href to another origin, no stylesheet or script file at all.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script src" not in page and "<link" not in page and "@import" not in page
    # The token goes in headers only: never into a URL the page builds.
    script = script_of(page)
    assert '"Authorization": "Bearer " + token' in script
    assert "token=" not in script.replace("#token=", "").replace("(?:^#|&)token=", "")


def test_script_parses(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the syntax check of the viewer's script needs it")
    path = tmp_path / "viewer.js"
    path.write_text(script_of(resources.files("aggregator").joinpath("viewer.html").read_text("utf-8")))
    subprocess.run([node, "--check", str(path)], check=True)


# --- a real browser -----------------------------------------------------------------------------------

class WebDriver:
    """Just enough of the W3C WebDriver protocol (chromedriver) for this test, over urllib."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                         "--disable-dev-shm-usage"]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())["value"]

    def go(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": list(args)})

    def wait(self, script: str, check: Callable[[Any], bool], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.js(script)
            if check(value):
                return value
            time.sleep(0.1)
        raise AssertionError(f"{script!r} never held; last {value!r}")

    def quit(self) -> None:
        self._call("DELETE", f"/session/{self.session}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(NO_BROWSER)
    port = free_port()
    proc = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        driver = WebDriver(port)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


LOG_TEXT = "return document.getElementById('log').innerText"


def start_job(start_aggregator: Any, volume: Path) -> tuple[Any, Path, str]:
    """An aggregator, and a volume whose results-export has ended (0) and whose blast wrote five
    lines: what both follow tests start from, and the job's read token."""
    agg = start_aggregator()
    logs = volume / "logs"
    (logs / "results-export.log").write_text("export 0\n")
    (logs / "results-export.exit").write_text("0\n")
    append(logs / "blast.log", b"".join(f"line {i}\n".encode() for i in range(5)))
    return agg, logs, read_token(TEST_SECRET, SHIPPER_JOB)


async def test_viewer_follows_a_real_shipper_in_chromium(browser: WebDriver, start_aggregator: Any,
                                                         volume: Path) -> None:
    """Phases, streams and exit codes, the follow updating while a real shipper ships what the
    containers write, the filter box; the token never in a URL or the server's log."""
    agg, logs, token = start_job(start_aggregator, volume)

    async def wait(script: str, check: Callable[[Any], bool]) -> Any:
        return await asyncio.to_thread(browser.wait, script, check)

    async with shipping(volume, [agg.url], token=job_token(TEST_SECRET, SHIPPER_JOB)) as shipper:
        await asyncio.to_thread(browser.go, f"{agg.url}/v1/jobs/{SHIPPER_JOB}/view#token={token}")
        await wait(LOG_TEXT, lambda t: "line 4" in t)
        # The token left the address bar; phases and streams are shown.
        assert "token" not in await asyncio.to_thread(browser.js, "return location.href")
        phases = await wait("return [...document.querySelectorAll('#phases button')].map(b => b.textContent)",
                            lambda v: len(v) >= 3)
        assert {"all phases", "running", "exporting_results"} <= set(phases)
        # The follow updates while the shipper ships what the container writes.
        append(logs / "blast.log", b"line 5\nline 6\nline 7\n")
        text = await wait(LOG_TEXT, lambda t: "line 7" in t)
        assert text.count("line 5") == 1
        # The filter box.
        await asyncio.to_thread(browser.js, "const f = document.getElementById('filter'); f.value = 'export'; "
                                            "f.dispatchEvent(new Event('input'))")
        text = await wait(LOG_TEXT, lambda t: "line 7" not in t)
        assert "export 0" in text
        # The end: the container exits 3, the shipper drains (eof); the follow ends, the exit codes show.
        (logs / "blast.exit").write_text("3\n")
        assert await shipper.stop() == 0
    await wait("return document.getElementById('status').textContent", lambda s: s.startswith("ended"))
    exits = await wait("return [...document.querySelectorAll('#streams tbody tr')].map(r => r.cells[5].textContent)",
                       lambda v: "3" in v)
    assert "0" in exits
    assert SHIPPER_POD in await asyncio.to_thread(browser.js, "return document.getElementById('streams').innerText")
    # The server never saw the token in a URL.
    assert token.split(".")[1] not in agg.log_path.read_text()


async def test_viewer_script_follows_a_real_shipper_in_node(start_aggregator: Any, volume: Path) -> None:
    """Without a browser: the page's own script in node over a minimal DOM (tests/aggregator/viewer_dom.mjs),
    following a live aggregator while a real shipper ships what the containers write."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    agg, logs, token = start_job(start_aggregator, volume)
    page = resources.files("aggregator").joinpath("viewer.html")
    shim = Path(__file__).with_name("viewer_dom.mjs")
    async with shipping(volume, [agg.url], token=job_token(TEST_SECRET, SHIPPER_JOB)) as shipper:
        with resources.as_file(page) as page_path:
            proc = await asyncio.create_subprocess_exec(
                node, str(shim), str(page_path), agg.url, SHIPPER_JOB, token,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                assert proc.stdout is not None
                steps: dict[int, Any] = {}
                while raw := await asyncio.wait_for(proc.stdout.readline(), 60):
                    doc = json.loads(raw)
                    assert "error" not in doc, doc
                    steps[doc["step"]] = doc
                    if doc["step"] == 1:
                        append(logs / "blast.log", b"line 5\nline 6\nline 7\n")
                    elif doc["step"] == 3:
                        append(logs / "blast.log", b"line 8\n")
                        (logs / "blast.exit").write_text("3\n")
                        assert await shipper.stop() == 0  # the drain sends each stream's eof
                assert await proc.wait() == 0, (await proc.stderr.read()) if proc.stderr else ""
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    pod = SHIPPER_POD
    assert {"all phases", "running", "exporting_results"} <= set(steps[1]["phases"])
    assert steps[1]["hash"] == ""  # the token left the address
    assert f"{pod}/blast line 0" in steps[1]["lines"]
    assert [x for x in steps[2]["lines"] if x.endswith("line 5")] == [f"{pod}/blast line 5"]
    assert steps[3]["lines"] == [f"{pod}/results-export export 0"]
    assert sorted(steps[4]["exits"]) == ["0", "3"]
    assert "[exit code 3]" in steps[4]["lastOutput"]
    assert steps[5]["phaseLines"] == [f"{pod}/results-export export 0"]
    assert steps[5]["download"] == f"{pod}/results-export export 0\n"
    # The token was never in a URL the page fetched, nor in the server's log.
    assert all(token not in u and "token" not in u for u in steps[5]["urls"])
    assert token.split(".")[1] not in agg.log_path.read_text()
