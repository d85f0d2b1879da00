"""Where messages go: an SMTP server (a pool of aiosmtplib connections), an outbox folder, or memory (tests).

Every transport answers one `Delivery` per message, classified by the reply's (enhanced) code: 2xx sent; 4xx,
refused or dropped connections deferred (retried with backoff); 5.1.x a bounce (the address is bad: suppress it);
5.7.x and 4.7.x a policy block (never the recipient's fault: counted against the campaign); other 5xx failed. A
connection that breaks after the message body was written is `uncertain`: the server may have accepted it, so it
is not sent again unless the transport says `on_uncertain: resend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal, Protocol

import aiosmtplib

from reconciler.spec import documents as spec

Status = Literal["sent", "deferred", "bounced", "policy", "failed", "uncertain", "unreachable", "abandoned"]
"""unreachable: the server could not be reached at all; the message never left, and it is nobody's fault.
abandoned: the caller said no at the point of no return (`OnWire`); nothing was delivered."""
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
MESSAGES_PER_CONNECTION = 100
"""Reconnect after this many messages: some servers cap a session, and a fresh one spreads load on a relay pool."""
IDLE_REUSE = 30.0
"""Seconds a pooled connection may sit idle and still be used: relays close idle sessions (Postfix after 300 s, many
sooner), and a fresh connection costs less than finding out."""


@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt to hand a message over."""

    status: Status
    reply: str
    code: int | None = None
    enhanced: str | None = None

    @property
    def soft_bounce(self) -> bool:
        """Mailbox full (x.2.2): a bounce that says nothing about the address being wrong."""
        return self.enhanced is not None and self.enhanced.endswith(".2.2")


def classify(code: int, message: str) -> Delivery:
    """An SMTP reply as a Delivery, by its enhanced status code (RFC 3463) where the server gives one."""
    match = _ENHANCED.match(message)
    enhanced = ".".join(match.groups()) if match else None
    reply = f"{code} {message}".strip()
    if 200 <= code < 300:
        return Delivery("sent", reply, code, enhanced)
    subject = enhanced.split(".", 1)[1] if enhanced else ""
    if subject.startswith("7."):
        status: Status = "policy" if code >= 500 else "deferred"
        return Delivery(status, reply, code, enhanced)
    if code < 500:
        return Delivery("deferred", reply, code, enhanced)
    if subject.startswith("1."):
        return Delivery("bounced", reply, code, enhanced)
    return Delivery("failed", reply, code, enhanced)


DEFAULT_RETRY = timedelta(days=3)


OnWire = Callable[[], bool]
"""Called at the point of no return: the server has accepted the envelope and said "go ahead" to DATA, and the body
with its final dot is about to be written. True goes on; False (or an exception) abandons the message: the
connection is dropped without the final dot, so the server discards the transaction."""


class Transport(Protocol):
    name: str
    max_connections: int
    on_uncertain: Literal["skip", "resend"]
    retry_for: timedelta
    breaker: Breaker

    async def send(self, sender: str, recipient: str, data: bytes, *, on_wire: OnWire | None = None) -> Delivery: ...

    async def probe(self) -> str | None:
        """None when the server can be reached now, else why not."""
        ...

    async def close_idle(self) -> None:
        """Let go of connections that waited too long to be used again (after every pass)."""
        ...

    async def close(self) -> None: ...


@dataclass
class Breaker:
    """A relay that cannot be reached THRESHOLD times in a row is down: no message is attempted until a probe (a
    connection without a message) gets through. Probes back off from 1 s to a minute."""

    THRESHOLD = 3
    MAX_DELAY = 60.0
    failures: int = 0
    down_since: float | None = None
    """time.time() when it went down."""
    last_error: str = ""
    delay: float = 1.0
    next_probe: float = 0.0
    """time.monotonic() of the next probe."""

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def success(self) -> None:
        self.failures, self.down_since, self.last_error, self.delay = 0, None, "", 1.0

    def failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.failures >= self.THRESHOLD and self.down_since is None:
            self.down_since = time.time()
            self.delay = 1.0
            self.next_probe = time.monotonic() + self.delay

    def probe_failed(self, error: str) -> None:
        self.last_error = error
        self.delay = min(self.MAX_DELAY, self.delay * 2)
        self.next_probe = time.monotonic() + self.delay

    def probe_due(self) -> bool:
        return self.down and time.monotonic() >= self.next_probe


class Limiter(Protocol):
    """What a transport waits on before each message: `RateLimiter` here, or buckets shared by every daemon on one
    state database (`ratelimits.SharedRateLimiter`)."""

    async def acquire(self) -> None: ...


class RateLimiter:
    """Token buckets (per second, minute, hour, day): every message of every campaign on a transport takes one."""

    def __init__(self, limits: list[tuple[int, float]]) -> None:
        now = time.monotonic()
        self.buckets = [[float(n), float(n), n / period, now] for n, period in limits]  # tokens, cap, rate, at
        self.lock = asyncio.Lock()

    @classmethod
    def from_rate(cls, rate: spec.Rate) -> RateLimiter:
        return cls(rate.limits())

    async def acquire(self) -> None:
        if not self.buckets:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                wait = 0.0
                for bucket in self.buckets:
                    tokens, cap, rate, at = bucket
                    bucket[0] = min(cap, tokens + (now - at) * rate)
                    bucket[3] = now
                    if bucket[0] < 1:
                        wait = max(wait, (1 - bucket[0]) / rate)
                if wait <= 0:
                    for bucket in self.buckets:
                        bucket[0] -= 1
                    return
                await asyncio.sleep(wait)


_EHLO_NAME: list[str] = []


async def ehlo_name(lock: asyncio.Lock) -> str:
    """This machine's name for EHLO, looked up once per process: aiosmtplib otherwise asks the resolver again, in a
    new worker thread, for every connection it opens (a slow resolver then delays every connection, and the send
    loop's thread pool grows to its limit). `lock` keeps connections opening together to one lookup."""
    async with lock:
        if not _EHLO_NAME:
            _EHLO_NAME.append(await asyncio.to_thread(socket.getfqdn))
    return _EHLO_NAME[0]


@dataclass
class _Connection:
    smtp: aiosmtplib.SMTP
    sent: int = 0
    body_written: bool = False
    idle_since: float = field(default_factory=time.monotonic)


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload: a line starting with "." gets another one (RFC 5321 §4.5.2), then the final ".\r\n"."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class SmtpTransport:
    """A pool of up to `max_connections` SMTP sessions, reused (RSET after a failure) and renewed every
    MESSAGES_PER_CONNECTION messages. STARTTLS/TLS verify the server's certificate (the system's CAs, or `ca_file`)."""

    def __init__(self, name: str, config: spec.SmtpTransport, *, limiter: Limiter | None = None) -> None:
        self.name = name
        self.host, self.port, self.security = config.host, config.port, config.security
        self.username, self.password_env, self.ca_file = config.username, config.password_env, config.ca_file
        self.max_connections, self.timeout = config.max_connections, config.timeout
        self.on_uncertain: Literal["skip", "resend"] = config.on_uncertain
        self.retry_for = config.retry_for
        self.limiter: Limiter = limiter or RateLimiter.from_rate(config.rate)
        self._idle: list[_Connection] = []
        self._tls: ssl.SSLContext | None = None
        self._slots = asyncio.Semaphore(self.max_connections)
        self._naming = asyncio.Lock()
        self.breaker = Breaker()

    def _tls_context(self) -> ssl.SSLContext | None:
        """One context for the pool (loading the system's CAs costs ~15 ms); none without TLS."""
        if self.security == "none":
            return None
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=self.ca_file)
        return self._tls

    async def _connect(self) -> _Connection:
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            use_tls=self.security == "tls",
            start_tls=self.security == "starttls",
            tls_context=self._tls_context(),
            local_hostname=await ehlo_name(self._naming),
        )
        await smtp.connect()
        if self.username:
            password = os.environ.get(self.password_env or "", "")
            await smtp.login(self.username, password)
        if smtp.is_ehlo_or_helo_needed:
            await smtp.ehlo()
        connection = _Connection(smtp)
        return connection

    async def send(self, sender: str, recipient: str, data: bytes, *, on_wire: OnWire | None = None) -> Delivery:
        await self.limiter.acquire()
        async with self._slots:
            while True:
                connection = self._take_idle()
                pooled = connection is not None
                if connection is None:
                    try:
                        connection = await self._connect()
                    except aiosmtplib.SMTPAuthenticationError as exc:
                        return self._unreachable(f"authentication failed: {exc.code} {exc.message}", exc.code)
                    except (aiosmtplib.SMTPException, OSError) as exc:
                        return self._unreachable(f"cannot connect to {self.host}:{self.port}: {exc}")
                delivery = await self._attempt(connection, sender, recipient, data, on_wire=on_wire, pooled=pooled)
                if delivery is not None:
                    return delivery
                # the server had closed this idle connection: the same message, on a fresh one, same attempt

    def _take_idle(self) -> _Connection | None:
        """A pooled connection, unless it sat idle so long that the server has likely closed it."""
        while self._idle:
            connection = self._idle.pop()
            if time.monotonic() - connection.idle_since < IDLE_REUSE and connection.smtp.is_connected:
                return connection
            connection.smtp.close()
        return None

    def _unreachable(self, reply: str, code: int | None = None) -> Delivery:
        self.breaker.failure(reply)
        return Delivery("unreachable", reply, code)

    async def _attempt(
        self,
        connection: _Connection,
        sender: str,
        recipient: str,
        data: bytes,
        *,
        on_wire: OnWire | None,
        pooled: bool,
    ) -> Delivery | None:
        """One transaction on `connection`; None when a pooled connection turned out dead before the body."""
        connection.body_written = False
        try:
            delivery = await self._transaction(connection, sender, recipient, data, on_wire)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421 and pooled:  # "closing": the server ended an idle session
                connection.smtp.close()
                return None
            delivery = classify(exc.code, exc.message)
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await connection.smtp.rset()
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            connection.smtp.close()
            if connection.body_written:
                return Delivery("uncertain", f"connection lost after the message was sent: {exc}")
            if pooled:
                return None
            return Delivery("deferred", f"connection lost: {exc}")
        self.breaker.success()
        connection.sent += 1
        if connection.smtp.is_connected and connection.sent < MESSAGES_PER_CONNECTION:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await connection.smtp.quit()
        return delivery

    async def probe(self) -> str | None:
        try:
            connection = await self._connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            return f"cannot connect to {self.host}:{self.port}: {exc}"
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await connection.smtp.quit()
        return None

    async def _transaction(
        self, connection: _Connection, sender: str, recipient: str, data: bytes, on_wire: OnWire | None
    ) -> Delivery:
        """MAIL, RCPT, DATA. Our bytes are CRLF already, so only dot-stuffing is left to do (`bytes.replace`, not
        aiosmtplib's per-message regexes), and we know exactly when the body went out."""
        smtp = connection.smtp
        for command, accepted in ((f"MAIL FROM:<{sender}>", (250,)), (f"RCPT TO:<{recipient}>", (250, 251))):
            response = await smtp.execute_command(command.encode())
            if response.code not in accepted:
                raise aiosmtplib.SMTPResponseException(response.code, response.message)
        response = await smtp.execute_command(b"DATA")
        if response.code != 354:
            raise aiosmtplib.SMTPResponseException(response.code, response.message)
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost before the message was sent")
        if on_wire is not None:
            try:
                go_on = on_wire()
            except BaseException:
                connection.smtp.close()  # without the final dot the server discards the transaction
                raise
            if not go_on:
                connection.smtp.close()
                return Delivery("abandoned", "not sent: abandoned before the message body")
        connection.body_written = True  # from here a broken connection leaves the outcome unknown
        protocol.write(dot_stuff(data))
        response = await protocol.read_response(timeout=self.timeout)
        return classify(response.code, response.message)

    async def close_idle(self) -> None:
        """QUIT the pooled connections idle for IDLE_REUSE or longer: they would not be used again, and an idle
        daemon holds no connection (nor its descriptor) to a relay that would drop it anyway."""
        stale = [c for c in self._idle if time.monotonic() - c.idle_since >= IDLE_REUSE]
        self._idle = [c for c in self._idle if c not in stale]
        for connection in stale:
            await _quit(connection)

    async def close(self) -> None:
        while self._idle:
            await _quit(self._idle.pop())


async def _quit(connection: _Connection) -> None:
    """QUIT politely (within the client's timeout); a connection that fails to is closed all the same."""
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await connection.smtp.quit()
    connection.smtp.close()


class OutboxTransport:
    """Writes each message as an .eml file (the embedded default): nothing needs an SMTP server to try a workspace.

    Files appear whole (written aside, then renamed), named by the message's ledger row so a retry overwrites."""

    max_connections = 1
    on_uncertain: Literal["skip", "resend"] = "resend"
    retry_for = DEFAULT_RETRY

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.breaker = Breaker()

    async def probe(self) -> str | None:
        return None

    def path_for(self, message_id: str) -> Path:
        return self.folder / (re.sub(r"[^A-Za-z0-9._-]", "_", message_id.strip("<>")) + ".eml")

    async def send(self, sender: str, recipient: str, data: bytes, *, on_wire: OnWire | None = None) -> Delivery:
        if on_wire is not None and not on_wire():
            return Delivery("abandoned", "not sent")
        message_id = re.search(rb"^Message-ID: (\S+)\r?$", data, re.M | re.I)
        name = message_id.group(1).decode() if message_id else f"{time.time_ns()}"
        target = self.path_for(name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part")
            partial.write_bytes(data)
            os.replace(partial, target)
        except OSError as exc:
            return Delivery("deferred", f"cannot write {target}: {exc}")
        return Delivery("sent", f"250 written to {target.name}", 250)

    async def close_idle(self) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class MemoryTransport:
    """Keeps messages in a list; `reply` scripts an outcome per message (tests of dispatch without sockets)."""

    name: str = "memory"
    max_connections: int = 2
    on_uncertain: Literal["skip", "resend"] = "skip"
    retry_for: timedelta = DEFAULT_RETRY
    reply: Callable[[str, bytes], Delivery] | None = None
    messages: list[tuple[str, str, bytes]] = field(default_factory=list)
    breaker: Breaker = field(default_factory=Breaker)

    async def probe(self) -> str | None:
        return None

    async def send(self, sender: str, recipient: str, data: bytes, *, on_wire: OnWire | None = None) -> Delivery:
        await asyncio.sleep(0)
        if on_wire is not None and not on_wire():
            return Delivery("abandoned", "not sent")
        delivery = self.reply(recipient, data) if self.reply else Delivery("sent", "250 ok", 250)
        if delivery.status == "sent":
            self.messages.append((sender, recipient, data))
        return delivery

    async def close_idle(self) -> None:
        return None

    async def close(self) -> None:
        return None


def make_transport(
    name: str, config: spec.SmtpTransport | spec.OutboxTransport, *, root: Path, limiter: Limiter | None = None
) -> Transport:
    """The transport Settings `transports.<name>` describes (as kept at the last good revision); `limiter` instead
    of the buckets in memory its `rate` gives."""
    if isinstance(config, spec.SmtpTransport):
        return SmtpTransport(name, config, limiter=limiter)
    return OutboxTransport(name, root / config.path)
