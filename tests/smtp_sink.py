"""A real SMTP server for tests: aiosmtpd on loopback, with faults scripted per recipient and attempt.

`script(recipient, attempt, phase)` returns None to go on, an SMTP reply such as "451 4.3.0 try later" to refuse
at that phase, or "drop" to cut the connection there without a reply. Phases: "rcpt" (before the message body is
sent: a clean retry) and "data" (after the whole body arrived: the sender cannot know whether it was accepted).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

Script = Callable[[str, int, str], str | None]


@dataclass
class Sink:
    """What the server received and refused, readable from the test's thread."""

    script: Script | None = None
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    refused: list[tuple[str, str]] = field(default_factory=list)
    on_message: Callable[[str, bytes], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    sessions: int = 0
    """Connections the server accepted."""
    closed: int = 0
    """Connections that ended (either side closed them)."""
    greetings: list[str] = field(default_factory=list)
    """The name each client gave in EHLO."""
    data_started: Counter[str] = field(default_factory=Counter)
    """Recipients whose DATA command was answered 354 (the client then sends the body)."""
    close_reused: str | None = None
    """End a session when the MAIL FROM of its second transaction arrives: a relay that timed the session out just
    as the client reused it (it still looked connected when the client took it). "421": answer 421 and close;
    "drop": cut the connection without a reply."""
    transactions: Counter[Session] = field(default_factory=Counter)
    """Messages taken in each session."""
    closed_at_mail: int = 0
    """Sessions `close_reused` ended."""

    def received(self) -> Counter[str]:
        with self.lock:
            return Counter(rcpt for rcpt, _ in self.messages)

    def _decide(self, server: SMTP, rcpt: str, phase: str) -> str | None:
        if self.script is None:
            return None
        action = self.script(rcpt, self.attempts[rcpt], phase)
        if action == "drop":
            assert server.transport is not None
            server.transport.close()
            with self.lock:
                self.refused.append((rcpt, f"{phase}: dropped"))
            return "421 4.4.2 closing (the client never reads this)"
        if action:
            with self.lock:
                self.refused.append((rcpt, action))
        return action

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.greetings.append(hostname)
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.close_reused and self.transactions[session]:
            assert server.transport is not None
            with self.lock:
                self.closed_at_mail += 1
            if self.close_reused == "drop":
                assert isinstance(server.transport, asyncio.Transport)
                server.transport.abort()  # nothing more is written, not even the reply below
            else:
                asyncio.get_running_loop().call_soon(server.transport.close)  # right after the reply is written
            return "421 4.4.2 closing: idle too long"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        with self.lock:
            self.attempts[address] += 1
        action = self._decide(server, address, "rcpt")
        if action:
            return action
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rcpt = envelope.rcpt_tos[0]
        data: Any = envelope.original_content or envelope.content
        action = self._decide(server, rcpt, "data")
        if action == "421 4.4.2 closing (the client never reads this)":
            # dropped after the body arrived: count it as delivered or not at random would hide bugs; we keep it
            # out of `messages` and in `refused`, and the sender must mark the row uncertain
            return action
        if action:
            return action
        with self.lock:
            self.messages.append((rcpt, bytes(data)))
            self.transactions[session] += 1
        if self.on_message is not None:
            self.on_message(rcpt, bytes(data))
        return "250 2.0.0 queued"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _CountingController(Controller):
    """aiosmtpd's controller, counting the sessions that start and end."""

    def __init__(self, sink: Sink, **options: Any) -> None:
        super().__init__(sink, **options)
        self.sink = sink

    def factory(self) -> SMTP:
        server: SMTP = super().factory()  # type: ignore[no-untyped-call]
        made, lost = server.connection_made, server.connection_lost
        sink = self.sink

        def connection_made(transport: Any) -> None:
            with sink.lock:
                sink.sessions += 1
            made(transport)

        def connection_lost(error: Exception | None) -> None:
            with sink.lock:
                sink.closed += 1
            lost(error)

        data = server._smtp_methods["DATA"]

        async def smtp_DATA(arg: str) -> None:
            envelope = server.envelope
            if envelope is not None and envelope.rcpt_tos:  # the 354 goes out next, as the command is accepted
                with sink.lock:
                    sink.data_started.update(envelope.rcpt_tos)
            await data(arg)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        server._smtp_methods["DATA"] = smtp_DATA  # aiosmtpd looks commands up in this table
        return server


class SinkServer:
    """`with SinkServer(sink) as port:` runs the server on 127.0.0.1 for the block."""

    def __init__(self, sink: Sink, *, port: int | None = None, **smtp_options: Any) -> None:
        """`smtp_options` go to aiosmtpd's SMTP (tls_context, require_starttls, authenticator, auth_required,
        timeout: seconds an idle session may last ...). `port`: the same port again, for a server that restarts."""
        self.sink = sink
        self.controller = _CountingController(
            sink,
            hostname="127.0.0.1",
            port=port or free_port(),
            ready_timeout=10,
            data_size_limit=10_000_000,
            **smtp_options,
        )

    def __enter__(self) -> int:
        self.controller.start()
        return int(self.controller.port)

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
