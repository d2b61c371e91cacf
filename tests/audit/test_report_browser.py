"""The HTML report in a real browser: headless Chromium driven over the DevTools protocol.

Checks that the page loads with no console error and no network fetch, shows the expected
number of requests (paged), shows a token's feature label on hover, and renders a non-blank
screenshot. Chromium is found on PATH (or $FEATUREGUARD_CHROMIUM); when missing, the test
installs Debian's `chromium` with apt-get if it runs as root, and skips, saying why, only when
no browser can be had. The DevTools client below is stdlib only: a minimal WebSocket.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from featureguard.audit.report import write_report

LAUNCH_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--window-size=1200,900",
]  # fmt: skip
PAGE_SIZE = 5


def find_chromium() -> tuple[str | None, str]:
    """A Chromium binary, installing Debian's package when possible; else None and why."""
    names = [os.environ.get("FEATUREGUARD_CHROMIUM", ""), "chromium", "chromium-browser",
             "google-chrome", "google-chrome-stable"]  # fmt: skip
    found = next((p for n in names if n and (p := shutil.which(n))), None)
    if found:
        return found, ""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return None, "no chromium on PATH, and apt-get is unavailable or this is not root"
    cmd = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium"
    try:
        done = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return None, "no chromium on PATH, and apt-get install chromium timed out"
    found = shutil.which("chromium")
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
    return found, "" if found else f"no chromium, and apt-get install chromium failed: {tail[0]}"


class WebSocket:
    """Just enough of RFC 6455 for DevTools: text frames out (masked), whole messages in."""

    def __init__(self, url: str) -> None:
        hostport, _, path = url.removeprefix("ws://").partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .encode()
        )  # fmt: skip
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self._exact(1)
        assert b" 101 " in head.split(b"\r\n", 1)[0], head

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            buf += chunk
        return buf

    def send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        size = (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                if n < 1 << 16 else bytes([0x80 | 127]) + struct.pack(">Q", n))  # fmt: skip
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(b"\x81" + size + mask + masked)

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload, op = self._exact(n), b0 & 0x0F
            if op == 8:
                raise ConnectionError("DevTools closed the connection")
            if op in (9, 10):  # ping, pong
                continue
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode()


class DevTools:
    """Commands to one page; every event received is kept in `events`."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws, self.last_id, self.events = ws, 0, []

    def __call__(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.last_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(event)
            self.events.append(json.loads(self.ws.recv()))

    def js(self, expression: str) -> Any:
        result = self("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")


def launch(binary: str, profile: str) -> tuple[subprocess.Popen, DevTools]:
    proc = subprocess.Popen([binary, *LAUNCH_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    port_file, deadline = Path(profile) / "DevToolsActivePort", time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"chromium did not start (exit {proc.poll()})")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
        page = next(t for t in json.load(answer) if t["type"] == "page")
    return proc, DevTools(WebSocket(page["webSocketDebuggerUrl"]))


def png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """Width, height, bytes per pixel and raw pixels of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, out = zlib.decompress(idat), width * bpp, bytearray()
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out += line
        prev = line
    return width, height, bpp, bytes(out)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, sample: SimpleNamespace
         ) -> Iterator[SimpleNamespace]:  # fmt: skip
    """The sample log plus three requests and one cut off before its completion (8 in all), as
    a report open in headless Chromium."""
    binary, why = find_chromium()
    if binary is None:
        pytest.skip(f"no browser for the report test: {why}")
    tmp = tmp_path_factory.mktemp("report")
    more = [sample.Req(f"r{i}", "2025-01-01T12:00:00.000000Z", [(["a", " b"], [" c", " d"])],
                [(0, 2, "watch", 1.1)]) for i in range(5, 8)]  # fmt: skip
    report = tmp / "report.html"
    orphan = sample.records([sample.Req("r9", "2025-01-01T13:00:00.000000Z", [(["q"], [" z"])],
                                        [(0, 1, "watch", 1.3)])])[0]  # fmt: skip
    log = sample.write_log(tmp / "audit.jsonl", sample.requests + more, extra=[orphan])
    write_report([log], report, page_size=PAGE_SIZE)
    profile = tempfile.mkdtemp(prefix="fg-chromium-")
    proc, tools = launch(binary, profile)
    try:
        for domain in ("Runtime", "Log", "Page", "Network"):
            tools(f"{domain}.enable")
        tools("Page.navigate", url=report.as_uri())
        tools.wait_for("Page.loadEventFired")
        yield SimpleNamespace(tools=tools, url=report.as_uri(), binary=binary)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _errors(tools: DevTools) -> list[str]:
    out = []
    for e in tools.events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            out.append(json.dumps(params["exceptionDetails"])[:300])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(json.dumps(params.get("args"))[:300])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            out.append(params["entry"].get("text", "")[:300])
    return out


def _hover(tools: DevTools, selector: str) -> None:
    box = tools.js(f"""(function () {{
        var r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();
        return [r.left + r.width / 2, r.top + r.height / 2]; }})()""")
    tools("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])


def test_loads_without_console_errors(page: SimpleNamespace) -> None:
    """The page loads and runs its script with no exception and no console error."""
    assert page.tools.js("document.readyState") == "complete"
    assert _errors(page.tools) == []


def test_fetches_nothing_but_itself(page: SimpleNamespace) -> None:
    """The only request the page makes is for its own file."""
    urls = [e["params"]["request"]["url"] for e in page.tools.events
            if e.get("method") == "Network.requestWillBeSent"]  # fmt: skip
    assert urls == [page.url]


def test_shows_the_expected_number_of_requests(page: SimpleNamespace) -> None:
    """8 requests: the count says so, page 1 shows 5 and page 2 the other 3."""
    tools = page.tools
    assert tools.js("document.getElementById('count').textContent") == "8 requests"
    count = "document.querySelectorAll('#requests section.req').length"
    assert tools.js(count) == PAGE_SIZE
    assert tools.js("document.getElementById('page').textContent") == "page 1 of 2 (8 shown)"
    tools.js("document.getElementById('next').click()")
    assert tools.js(count) == 3
    ids = "Array.from(document.querySelectorAll('section.req')).map(s => s.dataset.id).join()"
    assert tools.js(ids) == "r6,r7,r9"
    assert tools.js("document.querySelector('section.req[data-id=r9] .tok.trig').textContent") == (
        " z"
    )
    tools.js("document.getElementById('prev').click()")
    assert tools.js(count) == PAGE_SIZE
    assert _errors(tools) == []


def test_filter_shows_blocked_requests(page: SimpleNamespace) -> None:
    """The "blocked" filter leaves the two requests with a blocked row, marked as blocked."""
    tools = page.tools
    tools.js("var s = document.getElementById('show'); s.value = 'blocked';"
             "s.dispatchEvent(new Event('change'))")  # fmt: skip
    try:
        ids = "Array.from(document.querySelectorAll('section.req')).map(s => s.dataset.id).join()"
        assert tools.js(ids) == "r1,r4"
        assert tools.js("document.querySelectorAll('.row.blocked .tok.blk').length") == 2
        assert "blocked by unsafe" in tools.js("document.querySelector('.row.blocked').textContent")
    finally:
        tools.js("var s = document.getElementById('show'); s.value = 'all';"
                 "s.dispatchEvent(new Event('change'))")  # fmt: skip


def test_hovered_token_shows_its_feature_label(page: SimpleNamespace) -> None:
    """Moving the pointer onto the blocking token shows its policy, feature and label."""
    tools = page.tools
    _hover(tools, "#requests .tok.blk")
    tip = tools.js("document.getElementById('tip').textContent")
    assert tools.js("getComputedStyle(document.getElementById('tip')).display") == "block"
    assert "TRIGGERED unsafe (block): score 4 > 3" in tip
    assert "feature 1234 disables TLS = 4" in tip
    assert "disables TLS" in tools.js("document.querySelector('#requests .tok.blk').title")
    _hover(tools, "#requests .tok.sup")
    assert "feature 42 insult" in tools.js("document.getElementById('tip').textContent")


def test_screenshot_is_not_blank(page: SimpleNamespace) -> None:
    """A screenshot of the page has many colours, none covering nearly all of it."""
    shot = page.tools("Page.captureScreenshot", format="png",
                      clip={"x": 0, "y": 0, "width": 800, "height": 600, "scale": 0.5})  # fmt: skip
    width, height, bpp, pixels = png_pixels(base64.b64decode(shot["data"]))
    assert (width, height) == (400, 300)
    counts: dict[bytes, int] = {}
    for i in range(0, len(pixels), bpp):
        px = pixels[i : i + 3]
        counts[px] = counts.get(px, 0) + 1
    assert len(counts) > 50
    assert max(counts.values()) < 0.9 * width * height
