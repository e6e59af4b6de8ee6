"""The firing path in a process of its own: no request handling shares its event loop or its GIL.

The parent starts the child with the ``spawn`` method (never ``fork``: the parent has threads
and librdkafka). The child runs only the dispatcher (its own Redis pool, breakers and Kafka
producer; never chDB, whose folder only one process may open) and sends back over a queue each
execution result, lifecycle transition, breaker change and its claims in flight; the parent
feeds them to its own sinks on its own loop. The parent sends ``stop`` over a pipe; the child
drains (stops claiming, finishes claimed batches, acknowledges, flushes its producer) and exits.
The pipe's end-of-file tells the child its parent died: it drains and exits too. A child that
dies unexpectedly is started again with backoff; what it had claimed is reclaimed once its
leases expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from delayline.adapters.encryption import PayloadCipher, UnreadableEvents
from delayline.adapters.guarded import GuardedNearTermStore, GuardedPublisher
from delayline.backoff import backoff_ceiling
from delayline.clock import SystemClock
from delayline.domain.outcomes import ExecutionResult, LifecycleEntry
from delayline.firing_runtime import (
    START_TIMEOUT_SECONDS,
    dispatcher_config,
    fire_owned_shards,
    firing_clients,
    first_shards,
    near_term_store,
    shard_ownership,
)
from delayline.ports import LifecycleSink, OutcomeSink
from delayline.resilience import CircuitBreaker
from delayline.services.dispatcher import Dispatcher
from delayline.settings import Settings

log = logging.getLogger(__name__)

CLAIMS_REPORT_SECONDS = 1.0
RESTART_BACKOFF_INITIAL = 0.5
RESTART_BACKOFF_MAX = 30.0
STABLE_SECONDS = 60.0
"""A child that ran this long before dying restarts after the initial backoff again."""
MESSAGES_PER_HAND_OVER = 1000


class FiringProcess:
    """Runs the :class:`Dispatcher` in a child process and restarts it if it dies."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str,
        bootstrap_servers: str,
        sink: OutcomeSink,
        lifecycle: LifecycleSink | None = None,
        on_breaker_change: Callable[[str, str], None] = lambda _name, _state: None,
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._redis_url = redis_url
        self._bootstrap_servers = bootstrap_servers
        self._sink = sink
        self._lifecycle = lifecycle
        self._on_breaker_change = on_breaker_change
        self._on_restart = on_restart
        self._context = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._control: Connection | None = None
        self._reader: threading.Thread | None = None
        self._ready: asyncio.Future[None] | None = None
        self._started_at = 0.0
        self._restarts_in_a_row = 0  # since it last ran STABLE_SECONDS: sets the backoff
        self._restarting: asyncio.Task[None] | None = None
        self._stopping = False
        self.claims_in_flight = 0
        self.restarts = 0
        self.breaker_states: dict[str, str] = {}
        self.ownership: list[dict[str, Any]] = []
        """The status of the child's shard ownership (one node), sent every second."""

    @property
    def node_id(self) -> str:
        """The node id the child fires as (its shard leases are held under it)."""
        return self._settings.node_id

    @property
    def pid(self) -> int | None:
        """The running child's process id."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    @property
    def running(self) -> bool:
        """Whether a child is up and firing."""
        ready = self._ready
        if ready is None or not ready.done() or ready.cancelled() or ready.exception() is not None:
            return False
        return self.pid is not None

    async def start(self) -> None:
        """Start the child; returns once it fires (raises what stopped it from starting)."""
        self._loop = asyncio.get_running_loop()
        await self._spawn()

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        results = self._context.Queue()
        control_read, control_write = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=child_main,
            args=(
                self._settings,
                self._redis_url,
                self._bootstrap_servers,
                results,
                control_read,
                logging.getLogger().getEffectiveLevel(),
            ),
            name="delayline-firing",
            daemon=False,
        )
        process.start()  # from the loop's thread, which lives as long as the service
        control_read.close()
        if self._control is not None:
            self._control.close()  # the previous child's
        self._process, self._control = process, control_write
        self._started_at = time.monotonic()
        self._reader = threading.Thread(
            target=self._read, args=(process, results), name="delayline-firing-reader", daemon=True
        )
        self._reader.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_SECONDS)
        except TimeoutError:
            self._ready.cancel()
            process.kill()
            raise RuntimeError("the firing process did not start in time") from None
        log.info("firing process %d started", process.pid)

    def _read(self, process: multiprocessing.process.BaseProcess, results: Any) -> None:
        """In a thread: hand the child's messages over to the loop, in batches, until the child
        has ended and everything it sent was read."""
        loop = self._loop
        assert loop is not None
        ended = False
        while True:
            batch: list[tuple[Any, ...]] = []
            try:
                batch.extend(results.get(timeout=0.2))
                while len(batch) < MESSAGES_PER_HAND_OVER:
                    batch.extend(results.get_nowait())
            except queue.Empty:
                pass
            except (EOFError, OSError):
                ended = True
            if batch:
                with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                    loop.call_soon_threadsafe(self._handle, batch)
                continue
            if ended:
                break
            if not process.is_alive():
                ended = True  # one more read for what it sent just before it ended
        results.close()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._ended, process)

    def _handle(self, batch: list[tuple[Any, ...]]) -> None:
        for message in batch:
            kind = message[0]
            try:
                if kind == "result":
                    self._sink.record(message[1])
                elif kind == "transition":
                    if self._lifecycle is not None:
                        self._lifecycle.transition(message[1])
                elif kind == "breaker":
                    self.breaker_states[message[1]] = message[2]
                    self._on_breaker_change(message[1], message[2])
                elif kind == "claims":
                    self.claims_in_flight = message[1]
                elif kind == "ownership":
                    self.ownership = [message[1]]
                elif kind == "ready" and self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
                elif kind == "failed" and self._ready is not None and not self._ready.done():
                    self._ready.set_exception(
                        RuntimeError(f"the firing process failed to start: {message[1]}")
                    )
            except Exception:
                log.exception("handling a message from the firing process failed")

    def _ended(self, process: multiprocessing.process.BaseProcess) -> None:
        """The child ended and all it sent was handled: start another unless stopping."""
        if process is not self._process:
            return
        self.claims_in_flight = 0
        self.ownership = []
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                RuntimeError(f"the firing process exited with code {process.exitcode}")
            )
        if self._stopping:
            return
        ran = time.monotonic() - self._started_at
        if ran >= STABLE_SECONDS:
            self._restarts_in_a_row = 0
        delay = backoff_ceiling(
            self._restarts_in_a_row, RESTART_BACKOFF_INITIAL, RESTART_BACKOFF_MAX
        )
        log.error(
            "the firing process %s exited unexpectedly (code %s) after %.1f s: restarting in "
            "%.1f s; what it had claimed fires again once its leases expire",
            process.pid,
            process.exitcode,
            ran,
            delay,
        )
        self.restarts += 1
        self._on_restart()
        self._restarting = asyncio.create_task(self._restart(delay))
        self._restarts_in_a_row += 1

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping:
            return
        try:
            await self._spawn()
        except Exception as exc:  # its end is reported by _ended, which tries again
            log.error("restarting the firing process failed: %s", exc)

    async def stop(self, timeout: float) -> None:
        """Drain: the child stops claiming, finishes claimed batches, acknowledges, flushes its
        producer and exits; killed if it has not within ``timeout`` seconds."""
        self._stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
        process, control, reader = self._process, self._control, self._reader
        if control is not None:
            with contextlib.suppress(OSError):
                control.send("stop")
        if process is not None:
            await asyncio.to_thread(process.join, timeout)
            if process.is_alive():
                log.error("the firing process did not finish within %.0f s: killed", timeout)
                process.kill()
                await asyncio.to_thread(process.join, 5)
        if reader is not None:
            await asyncio.to_thread(reader.join, 10)
        await asyncio.sleep(0)  # the last messages handed over reach their sinks
        if control is not None:
            control.close()


class _QueueSink:
    """In the child: every result, transition and breaker change goes to the parent, batched
    per loop turn (one message on the queue, not one per item)."""

    def __init__(self, results: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._results = results
        self._loop = loop
        self._buffer: list[tuple[Any, ...]] = []

    def send(self, message: tuple[Any, ...]) -> None:
        self._buffer.append(message)
        if len(self._buffer) == 1:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._results.put(batch)

    def record(self, result: ExecutionResult) -> None:
        self.send(("result", result))

    def transition(self, entry: LifecycleEntry) -> None:
        self.send(("transition", entry))

    def breaker_changed(self, name: str, state: str) -> None:
        self.send(("breaker", name, state))


def child_main(
    settings: Settings,
    redis_url: str,
    bootstrap_servers: str,
    results: Any,
    control: Connection,
    log_level: int,
) -> None:
    """The child process: run the dispatcher until the parent says stop or is gone."""
    # Ctrl-C reaches the whole process group: the parent decides when this one drains.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s [firing]: %(message)s"
    )
    try:
        asyncio.run(_run_child(settings, redis_url, bootstrap_servers, results, control))
    except Exception as exc:
        log.exception("the firing process failed")
        results.put([("failed", str(exc))])
    results.close()
    results.join_thread()  # everything sent is in the pipe before the process ends


async def _run_child(
    settings: Settings,
    redis_url: str,
    bootstrap_servers: str,
    results: Any,
    control: Connection,
) -> None:
    s = settings
    loop = asyncio.get_running_loop()
    out = _QueueSink(results, loop)
    breakers = {
        name: CircuitBreaker(name, max_reset_timeout=5.0, on_change=out.breaker_changed)
        for name in ("redis_firing", "kafka_producer")
    }
    client, publisher = firing_clients(s, redis_url, bootstrap_servers)
    try:
        await client.ping()
        await publisher.start()
        # The key ring comes from the settings here too: sealed payloads open in this process.
        ring = s.key_ring()
        cipher = None if ring is None else PayloadCipher(ring, UnreadableEvents())
        near = near_term_store(s, client, cipher)

        def owned() -> frozenset[int]:  # the ownership below needs the dispatcher first
            return ownership.owned()

        dispatcher = Dispatcher(
            GuardedNearTermStore(near, breakers["redis_firing"]),
            GuardedPublisher(publisher, breakers["kafka_producer"]),
            out,
            SystemClock(),
            dispatcher_config(s),
            lifecycle=out,
            owned_shards=owned,
        )
        ownership = shard_ownership(s, client, dispatcher)
        await first_shards(ownership)

        def stop(reason: str) -> None:
            log.info("firing process draining (%s)", reason)
            loop.remove_reader(control.fileno())
            dispatcher.stop()
            # Never outlive a dead parent by more than the drain allows.
            deadline = threading.Timer(s.shutdown_timeout + 5, os._exit, (1,))
            deadline.daemon = True
            deadline.start()

        def on_control() -> None:
            try:
                control.recv()
            except (EOFError, OSError):
                stop("the parent process is gone")
                return
            stop("asked by the parent")

        loop.add_reader(control.fileno(), on_control)
        loop.add_signal_handler(signal.SIGTERM, stop, "SIGTERM")
        reporter = asyncio.create_task(_report_claims(dispatcher, out))
        out.send(("ready",))
        try:
            await fire_owned_shards(
                dispatcher, ownership, lambda status: out.send(("ownership", status))
            )
        finally:
            reporter.cancel()
            out.send(("claims", 0))
            out.flush()
    finally:
        await publisher.stop(s.shutdown_timeout)
        await client.aclose()


async def _report_claims(dispatcher: Dispatcher, out: _QueueSink) -> None:
    last = -1
    while True:
        if dispatcher.claims_in_flight != last:
            last = dispatcher.claims_in_flight
            out.send(("claims", last))
        await asyncio.sleep(CLAIMS_REPORT_SECONDS)
