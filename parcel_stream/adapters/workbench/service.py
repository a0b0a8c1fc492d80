"""The workbench service: the database migrated, the two stream threads, the pages served
by uvicorn. ``serve`` runs until SIGINT/SIGTERM and stops the threads on the way out."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

from parcel_stream.adapters.workbench.auth import Users
from parcel_stream.adapters.workbench.cases import CaseStore
from parcel_stream.adapters.workbench.db import connect, migrate
from parcel_stream.adapters.workbench.ingest import HoldsIngester, OutcomeSender
from parcel_stream.adapters.workbench.metrics import WorkbenchMetrics
from parcel_stream.adapters.workbench.web import History, Workbench, create_app
from parcel_stream.reputation import ShipperState
from parcel_stream.settings import Settings

log = logging.getLogger("parcel_stream.workbench")
PORT_FILE = "workbench.port"


def open_store(settings: Settings) -> tuple[CaseStore, Users]:
    """The case store and users of these settings, migrated to the current schema."""
    url = settings.workbench_db
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = connect(url)
    migrate(engine)
    return CaseStore(engine, sla_ms=round(settings.workbench_sla_minutes * 60_000)), Users(engine)


def _entity_lines(kind: str, st: ShipperState | None) -> dict[str, str]:
    if st is None:
        return {kind: "no state (never seen, or expired)"}
    since = time.strftime("%Y-%m-%d", time.gmtime(st.first_seen_ms / 1000))
    return {kind: f"{st.seen:,} parcels since {since}, {st.holds:,} held, {st.exams:,} "
                  f"examined, {st.violations:,} violations found"}  # fmt: skip


def state_history(settings: Settings) -> History:
    """Reads the shipper's and seller's state from the state store for the parcel page."""
    from parcel_stream.adapters.redis_store import RedisReputationStore

    holder: dict[str, Any] = {}

    async def history(shipper: str, seller: str, address: str) -> dict[str, Any] | None:
        store = holder.get("store")
        if store is None:
            store = holder["store"] = RedisReputationStore.from_settings(settings, 2.0)
        out = _entity_lines("shipper", await store.shipper(shipper))
        if seller:
            out.update(_entity_lines("seller", await store.seller(seller)))
        if address:  # shown to every role: counts only, no address
            shippers, violations = await store.address_state(address, time.time() * 1000)
            out["consignee address"] = (f"{shippers:,} shippers send to it; recent violations "
                                        f"found there {violations:.1f}")  # fmt: skip
        return out

    return history


def build(settings: Settings, with_streams: bool = True) -> tuple[Any, list[Any], Workbench]:
    """The application and its threads (not started)."""
    store, users = open_store(settings)
    metrics = WorkbenchMetrics(store)
    threads: list[Any] = []
    wake = lambda: None  # noqa: E731
    ingester: HoldsIngester | None = None
    if with_streams:
        ingester = HoldsIngester(settings, store, metrics)
        sender = OutcomeSender(settings, store, metrics)
        threads = [ingester, sender]
        wake = sender.wake.set

    def problem() -> str | None:
        if ingester is not None and ingester.error is not None:
            return f"the holds consumer stopped ({type(ingester.error).__name__})"
        return None

    sla = settings.workbench_sla_minutes
    wb = Workbench(store, users, metrics, wake_sender=wake, history=state_history(settings),
                   secure_cookies=settings.workbench_secure_cookies, problem=problem,
                   sla_label=f"{sla / 60:g} h" if sla >= 60 else f"{sla:g} min")  # fmt: skip
    return create_app(wb), threads, wb


def serve(settings: Settings, state_dir: str | None = None, streams: bool = True) -> int:
    import uvicorn

    app, threads, _wb = build(settings, with_streams=streams)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response's headers and body are separate writes,
    # and with Nagle the body would wait for the client's delayed ACK (40 ms a request)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((settings.workbench_host, settings.workbench_port))
    except OSError as exc:
        raise SystemExit(f"error: cannot listen on {settings.workbench_host}:"
                         f"{settings.workbench_port} ({exc.strerror}): set "
                         "PARCEL_WORKBENCH_PORT to a free port") from None  # fmt: skip
    sock.listen(2048)  # before the port is reported: clients wait in the backlog until
    port = sock.getsockname()[1]  # the server accepts, never "connection refused"
    if state_dir:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        Path(state_dir, PORT_FILE).write_text(str(port))
    for t in threads:
        t.start()
    log.info("workbench on http://%s:%d", settings.workbench_host, port)
    config = uvicorn.Config(app, log_level=settings.log_level if settings.log_level in (
        "debug", "info", "warning", "error") else "info", access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        for t in threads:
            t.stopping.set()
            if hasattr(t, "wake"):
                t.wake.set()
        for t in threads:
            t.join(timeout=10)
    return 0
