"""A headless Chromium driven over the DevTools protocol (aiohttp's WebSocket client), for browser tests.

Enough to load a page, wait for it, read its text and click what a person would click; no npm packages or
downloaded browsers needed (the system's chromium, which .ci/run installs).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


class Browser:
    """`async with Browser(profile_dir) as page:` a page to `goto`, `click` and `text`."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900):
        self.profile = profile
        self.size = (width, height)
        self.process: subprocess.Popen | None = None
        self.session: aiohttp.ClientSession | None = None
        self.socket = None
        self.ids = itertools.count(1)
        self.events: asyncio.Queue = asyncio.Queue()
        self.replies: dict[int, asyncio.Future] = {}
        self.reader: asyncio.Task | None = None

    async def __aenter__(self) -> "Browser":
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                f"--window-size={self.size[0]},{self.size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
            target = next(t for t in await response.json() if t["type"] == "page")
        self.socket = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.socket is not None:
            await self.socket.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    async def _read(self) -> None:
        async for message in self.socket:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self.replies:
                self.replies.pop(data["id"]).set_result(data)
            elif "method" in data:
                await self.events.put(data)

    async def send(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        reply = asyncio.get_running_loop().create_future()
        self.replies[message_id] = reply
        await self.socket.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        data = await asyncio.wait_for(reply, 60)
        if "error" in data:
            raise RuntimeError(f"{method}: {data['error']}")
        return data.get("result", {})

    async def _loaded(self) -> None:
        while True:
            event = await asyncio.wait_for(self.events.get(), 60)
            if event["method"] == "Page.loadEventFired":
                return

    async def goto(self, url: str) -> None:
        self._drain()
        await self.send("Page.navigate", url=url)
        await self._loaded()

    async def click(self, selector: str) -> None:
        """Click the element, as a person would, and wait for the page it leads to."""
        self._drain()
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            f" if (!e) return false; e.click(); return true; }})()"
        )
        assert found, f"nothing matches {selector}"
        await self._loaded()

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def text(self) -> str:
        return await self.evaluate("document.body.innerText")

    async def screenshot(self, path: Path) -> Path:
        import base64

        data = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def _drain(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()
