"""DecodePool: decode and map in child processes, so the intake's thread keeps the bookkeeping.

Why: the consumer's own work is one Python thread (the GIL). Draining a backlog it is CPU-bound,
decode + map about half of it, while a second CPU idles. With `pipeline.decode_processes: N`
the App starts N children (`python -m consumer.decode_pool`), each building the same decoder and
mapper from the same schemas and rules (`StageSpec`, consumer/prepare.py); the intake
(consumer/intake.py) sends them the values of the records it read, in chunks, round robin, and
takes the results back in the order it sent them.
Everything else stays in the parent (`Pipeline.accept`): offsets, the DLQ, coalescing, bulk.
A child never talks to the Schema Registry: the parent fetches each writer schema as before and
sends its text along with the next chunk (`Decoder.schema_texts`).

On the wire: multiprocessing.connection's framing over a socketpair, each message a pickle
(parent and child run the same code; nothing else speaks on that socket). Parent to child: the
`StageSpec` once, then (new schema texts, values). Child to parent: (new attribute-name tuples,
outcomes), an outcome being None (no rule matched), an update as (identity type, identity,
index of its names, values, rules), or an event error as ("error", class name, reason,
message, HTTP status, body). Names go once per child: a tuple of names costs more to send than
to index.

A child that dies, or answers nothing usable, fails every chunk it holds with
`DecodeProcessLost`, and the intake stops the consumer: the records it held were never tracked,
so they are read again after the restart. A child ignores SIGINT and SIGTERM (the parent
decides when to stop) and exits when its socket closes, also when the parent is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from consumer.errors import (
    ConfigError,
    DecodeError,
    EventError,
    MappingError,
    PermanentDeliveryError,
    ProfileConsumerError,
)
from consumer.mapping import ProfileUpdate
from consumer.prepare import Prepared, StageSpec, prepare

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
# _TRUSTED: pickles are read only from an anonymous socketpair made by the parent, whose other
# end only its own child holds (passed as an inherited descriptor, never a path or a port).
_ERRORS: dict[str, type[EventError]] = {
    cls.__name__: cls for cls in (DecodeError, MappingError, PermanentDeliveryError)
}
Names = tuple[str, ...]
Future = asyncio.Future[list[Prepared]]


class DecodeProcessLost(ProfileConsumerError):
    """A decode process died or broke the exchange; the consumer stops (nothing is lost)."""


# --- the parent's side --------------------------------------------------------------------


class _Child:
    """One child process and two threads talking to it: one sends chunks as they come, so the
    child always has the next one waiting (it never idles while the parent takes results), the
    other reads the answers, which come in the order the chunks went."""

    def __init__(self, index: int, spec: StageSpec, loop: asyncio.AbstractEventLoop) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(  # noqa: S603 - our own module, our own interpreter
            [sys.executable, "-m", "consumer.decode_pool", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._socket = ours
        self._conn = Connection(os.dup(ours.fileno()))
        self._loop = loop
        self._names: list[Names] = []
        self._texts_sent = 0
        self._requests: queue.SimpleQueue[tuple[list[Any], Future] | None] = queue.SimpleQueue()
        self._sent: deque[Future] = deque()  # sent, not answered yet, oldest first
        self._closing = False
        self._conn.send_bytes(pickle.dumps(spec))
        self._threads = [
            threading.Thread(target=target, name=f"decode-process-{index}-{role}", daemon=True)
            for target, role in ((self._send, "send"), (self._receive, "receive"))
        ]

    def ready(self) -> None:
        """Wait for the child's first answer (it loaded schemas and rules); raises otherwise."""
        if not self._conn.poll(START_TIMEOUT_SECONDS):
            raise DecodeProcessLost(f"decode process did not start in {START_TIMEOUT_SECONDS:g}s")
        try:
            answer = pickle.loads(self._conn.recv_bytes())  # noqa: S301 - see _TRUSTED
        except (EOFError, OSError) as exc:
            raise DecodeProcessLost("decode process exited while starting") from exc
        if answer != "ready":
            raise DecodeProcessLost(f"decode process could not start: {answer}")
        for thread in self._threads:
            thread.start()

    def prepare(self, values: list[bytes | None], texts: dict[int, str]) -> Future:
        future: Future = self._loop.create_future()
        fresh = {}
        if len(texts) > self._texts_sent:  # ids only ever get added
            fresh = dict(list(texts.items())[self._texts_sent :])
            self._texts_sent = len(texts)
        self._requests.put(([fresh, values], future))
        return future

    def _send(self) -> None:
        while (item := self._requests.get()) is not None:
            request, future = item
            self._sent.append(future)  # before the send: the answer may come at once
            try:
                self._conn.send_bytes(pickle.dumps(request, protocol=5))
            except OSError as exc:
                self._fail(exc)
                return

    def _receive(self) -> None:
        while True:
            try:
                names, outcomes = pickle.loads(self._conn.recv_bytes())  # noqa: S301
                self._names.extend(names)
                prepared = [_revive(outcome, self._names) for outcome in outcomes]
            except Exception as exc:  # EOF, a broken socket, an answer we cannot read
                self._fail(exc)
                return
            self._loop.call_soon_threadsafe(_settle, self._sent.popleft(), prepared)

    def _fail(self, exc: Exception) -> None:
        """Every chunk sent or waiting fails; the child is of no further use."""
        if self._closing:
            return
        code = self.process.poll()
        lost = DecodeProcessLost(f"decode process lost ({type(exc).__name__}, exit code {code})")
        while True:  # both threads may get here when the child dies: each takes what is left
            try:
                future = self._sent.popleft()
            except IndexError:
                break
            self._loop.call_soon_threadsafe(_settle_error, future, lost)
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._loop.call_soon_threadsafe(_settle_error, item[1], lost)

    def close(self) -> None:
        self._closing = True
        self._requests.put(None)
        # The child reads EOF and exits; its end closing ends our receiver's read (closing the
        # descriptor under a blocked read would not wake it).
        with contextlib.suppress(OSError):  # already gone with a dead child
            self._socket.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(5.0)
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._conn.close()
        self._socket.close()


def _settle(future: Future, prepared: list[Prepared]) -> None:
    if not future.done():
        future.set_result(prepared)


def _settle_error(future: Future, exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


class DecodePool:
    """Decode processes, used round robin; `prepare` keeps no order itself: the caller awaits
    the futures in the order it asked."""

    def __init__(self, children: Sequence[_Child]) -> None:
        self._children = list(children)
        self._next = 0
        self.chunks = 0  # chunks sent so far

    @classmethod
    async def start(cls, spec: StageSpec, processes: int) -> DecodePool:
        loop = asyncio.get_running_loop()
        children: list[_Child] = []
        try:
            for index in range(processes):
                children.append(_Child(index, spec, loop))
            for child in children:
                await asyncio.to_thread(child.ready)
        except BaseException:
            for child in children:
                child.close()
            raise
        log.info(
            "decode processes started",
            extra={"event": "decode_processes", "pids": [c.process.pid for c in children]},
        )
        return cls(children)

    @property
    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children]

    def prepare(
        self, values: list[bytes | None], texts: dict[int, str]
    ) -> asyncio.Future[list[Prepared]]:
        """What `pipeline.prepare` makes of each value, computed in the next child; `texts`:
        the writer schemas the parent's decoder has (the new ones are sent along)."""
        child = self._children[self._next]
        self._next = (self._next + 1) % len(self._children)
        self.chunks += 1
        return child.prepare(values, texts)

    async def close(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(child.close) for child in self._children))


def _revive(outcome: Any, names: list[Names]) -> Prepared:
    if outcome is None:
        return None
    if outcome[0] == "error":
        _, kind, reason, message, status, body = outcome
        if kind == "PermanentDeliveryError":
            return PermanentDeliveryError(reason, message, status, body)
        return _ERRORS[kind](reason, message)
    identity_type, identity, at, values, rules = outcome
    return ProfileUpdate(identity_type, identity, dict(zip(names[at], values, strict=True)), rules)


# --- the child's side ---------------------------------------------------------------------


def _flatten(prepared: Prepared, names: dict[Names, int], fresh: list[Names]) -> Any:
    if prepared is None:
        return None
    if isinstance(prepared, EventError):
        status = getattr(prepared, "http_status", None)
        body = getattr(prepared, "body", b"")
        return ("error", type(prepared).__name__, prepared.reason, str(prepared), status, body)
    key = tuple(prepared.attributes)
    at = names.get(key)
    if at is None:
        at = names[key] = len(names)
        fresh.append(key)
    values = tuple(prepared.attributes.values())
    return (prepared.identity_type, prepared.identity, at, values, prepared.rules)


def serve(conn: Connection) -> int:
    """The child: build the stages, then answer chunks until the parent closes the socket."""
    spec: StageSpec = pickle.loads(conn.recv_bytes())  # noqa: S301 - see _TRUSTED
    texts: dict[int, str] = {}
    try:
        decoder, mapper = spec.build(texts.__getitem__ if spec.writer_schema is None else None)
    except ConfigError as exc:
        conn.send_bytes(pickle.dumps(str(exc)))
        return 1
    conn.send_bytes(pickle.dumps("ready"))
    names: dict[Names, int] = {}
    while True:
        try:
            fresh_texts, values = pickle.loads(conn.recv_bytes())  # noqa: S301
        except EOFError:
            return 0
        texts.update(fresh_texts)
        fresh: list[Names] = []
        outcomes = [_flatten(prepare(decoder, mapper, value), names, fresh) for value in values]
        conn.send_bytes(pickle.dumps((fresh, outcomes), protocol=5))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(sys.argv[1]))
    try:
        code = serve(conn)
    finally:
        conn.close()
    os._exit(code)  # no atexit work of the modules the stages imported


if __name__ == "__main__":
    main()
