"""Open an HTML file in headless Chromium and report its console errors and the values of a few JS expressions.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (fd 3: commands in, fd 4: replies
out, each message JSON ending in a NUL byte), so no websocket client or browser download is needed. The browser is
Debian's `chromium` package (`apt-get install -y chromium`); tests skip when it is missing.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]


# Puts the two pipe ends at fds 3 and 4, where --remote-debugging-pipe expects them, then becomes chromium. Both are
# first copied above 9, so that neither lands on the other's target.
_LAUNCHER = (
    "import fcntl, os, sys\n"
    "fds = [int(fd) for fd in sys.argv[1:3]]\n"
    "r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds)\n"
    "[os.close(fd) for fd in fds]\n"
    "os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int):
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)


def open_page(path: Path, expressions: dict[str, str], *, ready: str = "true", timeout: float = 60) -> tuple[dict[str, Any], list[str]]:
    """Load `path`, wait until the JS expression `ready` is true, then evaluate `expressions`.

    Returns ({name: value}, errors): errors are console.error/assert calls, uncaught exceptions and error-level log
    entries (failed loads included), each as one line.
    """
    binary = chromium_path()
    assert binary, "chromium not found"
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(to_chrome_r), str(from_chrome_w), binary, *FLAGS,
                             f"--user-data-dir={profile}", "about:blank"],
                            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(to_chrome_w, from_chrome_r)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout)

        def evaluate(expression: str) -> Any:
            result = pipe.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
            if "exceptionDetails" in result:
                raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
            return result["result"].get("value")

        deadline = time.monotonic() + timeout
        while not evaluate(ready):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never became ready: {ready}")
            time.sleep(0.1)
        values = {name: evaluate(expression) for name, expression in expressions.items()}
        pipe.send("Runtime.evaluate", {"expression": "0"}, session=session)  # flush events queued so far
        try:
            pipe.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError):
            pass
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return values, _errors(pipe.events)


def _errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console." + params["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                    for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return errors
