"""The real app under uvicorn on loopback, in a thread of the test process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn

from reconciler.clock import SystemClock
from reconciler.state.location import StateLocation
from reconciler.web import create_app
from smtp_sink import free_port
from state_helpers import open_state, place


class WebServer:
    """`with WebServer(root) as base:` serves the workspace's state database at `base` (http://127.0.0.1:PORT).
    Several may serve one PostgreSQL state at once, as daemons behind a load balancer do."""

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        fetch: Callable[[str], bytes] | None = None,
        state: StateLocation | None = None,
    ) -> None:
        """`state`: serve that state (created and migrated already) instead of the workspace's."""
        if state is None:
            state = place(root)
            open_state(root).close()  # created and migrated, as `reconciler run` does before serving
        clock = SystemClock()
        self.app = (
            create_app(state, clock=clock, root=root, fetch=fetch)
            if fetch
            else create_app(state, clock=clock, root=root)
        )
        self.port = port or free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", access_log=False
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
