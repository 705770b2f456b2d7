"""Helpers for end-to-end tests in a real browser: a Voilà server and headless Chromium.

The browser is Debian's ``chromium`` package (``.ci/run`` installs it), driven by
the ``playwright`` Python package through ``executable_path``: Playwright's own
browser download is never used (no network beyond the package registries).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    """Path of a system Chromium, or None."""
    for path in CHROMIUM_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing_browser_tools() -> str | None:
    """Why a browser test cannot run here (None: it can)."""
    if find_chromium() is None:
        return ("Chromium is not installed (Debian: apt-get install chromium); "
                "the browser test runs in CI, where .ci/run installs it")
    for module, package in (("playwright", "playwright"), ("voila", "voila")):
        try:
            __import__(module)
        except ImportError:
            return f"the Python package {package} is not installed (pip install {package})"
    return None


def free_port() -> int:
    """A localhost port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float, log: Path) -> None:
    """Until something accepts connections on ``port``; fail early if ``process`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def server(command: list[str], port: int, log: Path, env: dict | None = None, timeout: float = 60):
    """Run ``command`` (a server listening on ``port``) for the duration; stop it and its children.

    SIGTERM first (Voilà then shuts its kernels down), then SIGKILL to the whole
    process group if it has not stopped within 10 s.
    """
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, process, timeout, log)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:  # the kernel is in the same session: nothing is left behind
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


@contextmanager
def chromium_page(user_data_dir: Path, width: int = 1600, height: int = 1000):
    """A fresh headless Chromium profile and one page in it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()
