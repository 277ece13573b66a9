"""Headless Debian chromium driven over the DevTools protocol, as a person uses it.

The browser holds the session cookie as the server set it, loads pages from the
live server, and clicks buttons with real mouse events, so forms are submitted
by the browser itself (its own ``Origin`` and cookie rules apply). Reading the
page (``dom``, ``rect``) is done by DevTools, which a page's CSP does not govern;
the page itself runs no script.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium")
TIMEOUT_S = 60


class Page:
    """One tab of a running chromium, over its DevTools WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            doc = json.loads(message.data)
            if "id" in doc:
                answer = self._answers.pop(doc["id"])
                if answer.done():  # its caller gave up waiting
                    continue
                if "error" in doc:
                    answer.set_exception(RuntimeError(f"DevTools: {doc['error']}"))
                else:
                    answer.set_result(doc.get("result", {}))
            for waiter in self._waiting.pop(doc.get("method", ""), []):
                if not waiter.done():
                    waiter.set_result(doc.get("params", {}))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._answers[number] = answer
        await self._ws.send_json({"id": number, "method": method, "params": params})
        return await asyncio.wait_for(answer, TIMEOUT_S)

    def expect(self, event: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``event``: ask before causing it, so none is missed."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(event, []).append(waiter)
        return waiter

    async def open(self, url: str) -> None:
        loaded = self.expect("Page.loadEventFired")
        await self.call("Page.navigate", url=url)
        await asyncio.wait_for(loaded, TIMEOUT_S)

    async def dom(self) -> str:
        found = await self.call(
            "Runtime.evaluate",
            expression="document.documentElement.outerHTML",
            returnByValue=True,
        )
        return str(found["result"]["value"])

    async def count(self, selector: str) -> int:
        found = await self.call(
            "Runtime.evaluate",
            expression=f"document.querySelectorAll({json.dumps(selector)}).length",
            returnByValue=True,
        )
        return int(found["result"]["value"])

    async def click(self, selector: str) -> None:
        """Press and release the mouse on the element, and wait for the page it loads."""
        x, y = await self._centre(selector)
        loaded = self.expect("Page.loadEventFired")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )
        await asyncio.wait_for(loaded, TIMEOUT_S)

    async def _centre(self, selector: str) -> tuple[float, float]:
        found = await self.call(
            "Runtime.evaluate",
            expression=(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
            ),
            returnByValue=True,
        )
        assert "value" in found["result"], f"no {selector} on the page: {found}"
        x, y = found["result"]["value"]
        return float(x), float(y)

    async def type_into(self, selector: str, text: str) -> None:
        """Click into the field and type ``text`` as keystrokes would."""
        x, y = await self._centre(selector)
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )
        await self.call("Input.insertText", text=text)

    async def close(self) -> None:
        await self._ws.close()
        await self._reader


def _devtools_port(process: subprocess.Popen[str]) -> int:
    """The port chromium prints once DevTools listens; its stderr is drained after."""
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("DevTools listening on ws://"):
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    raise AssertionError(f"chromium exited before DevTools listened: {''.join(seen)[-2000:]}")


@asynccontextmanager
async def browser(profile: Path, server_url: str, cookie: str | None = None) -> AsyncIterator[Page]:
    """A headless chromium tab; holding the dashboard's session ``cookie``
    (``name=value``) for ``server_url`` as the server sets it, if given."""
    assert CHROMIUM, "chromium is not installed: run 'make setup' (it is in DEB_PACKAGES)"
    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = await asyncio.to_thread(_devtools_port, process)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as listed:
                targets = await listed.json()
            tab = next(t for t in targets if t["type"] == "page")
            ws = await http.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=64 << 20)
            page = Page(ws)
            try:
                await page.call("Page.enable")
                if cookie is None:
                    yield page
                    return
                name, value = cookie.split("=", 1)
                cookie_set = await page.call(
                    "Network.setCookie",
                    name=name,
                    value=value,
                    url=server_url,
                    httpOnly=True,
                    sameSite="Strict",
                )
                assert cookie_set.get("success", True), cookie_set
                yield page
            finally:
                await page.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
