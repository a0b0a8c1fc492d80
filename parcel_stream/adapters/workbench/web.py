"""The workbench's pages (Starlette, server-rendered Jinja2 templates, no JavaScript build).

Every page but the sign-in page needs a session; every form carries the session's CSRF
token (the sign-in form a pre-session one, double-submitted in a cookie) and is refused
without it. Errors are pages with a message, never a stack trace. Personal data (the
consignee's name and address) is shown only to officers and supervisors, and each view of
it is written to the audit log.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from parcel_stream.adapters.workbench.auth import AuthError, Session, Users, csrf_ok
from parcel_stream.adapters.workbench.cases import (
    OPEN,
    SORTS,
    STATUSES,
    Case,
    CaseError,
    CaseStore,
    QueueFilter,
    Status,
    now_ms,
)
from parcel_stream.adapters.workbench.metrics import WorkbenchMetrics
from parcel_stream.model import Finding, Outcome

log = logging.getLogger("parcel_stream.adapters.workbench")
COOKIE = "ps_session"
PRE_COOKIE = "ps_signin"
OUTCOMES: tuple[str, ...] = Outcome.__args__  # type: ignore[attr-defined]
FINDINGS: tuple[str, ...] = Finding.__args__  # type: ignore[attr-defined]
SELECTIONS = ("risk", "random", "exploration")
MAX_NOTES = 2000

# the state store's view of a parcel's shipper, seller and address (None: not available)
History = Callable[[str, str, str], Awaitable[dict[str, Any] | None]]


@dataclass
class Workbench:
    """What the pages use: the case store, the users, the metrics, how to wake the
    outcome sender, and how to read the state store's history of an entity."""

    store: CaseStore
    users: Users
    metrics: WorkbenchMetrics
    wake_sender: Callable[[], None] = lambda: None
    history: History | None = None
    secure_cookies: bool = False
    # why the instance cannot serve its purpose now (None: ready), for /readyz
    problem: Callable[[], str | None] = lambda: None
    sla_label: str = "4 h"
    extra: dict[str, Any] = field(default_factory=dict)


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("parcel_stream.adapters.workbench", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    undefined=jinja2.StrictUndefined,
)


def _age(ms: float) -> str:
    s = max(ms / 1000, 0)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


_ENV.filters["age"] = _age
_ENV.filters["when"] = _when


def page(name: str, code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_ENV.get_template(name).render(**context), status_code=code)


def create_app(wb: Workbench) -> Starlette:
    """The workbench application."""

    async def session_of(request: Request) -> Session | None:
        return await run_in_threadpool(wb.users.session, request.cookies.get(COOKIE))

    def message(request: Request, text: str, status: int, session: Session | None = None,
                back: str = "") -> HTMLResponse:  # fmt: skip
        return page("message.html", status, message=text, session=session,
                    back=back or "/queue")  # fmt: skip

    def secure(request: Request) -> bool:
        return wb.secure_cookies or request.url.scheme == "https"

    def sign_in_page(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        resp = page("sign_in.html", status, error=error, csrf=token, session=None)
        resp.set_cookie(PRE_COOKIE, token, httponly=True, samesite="strict",
                        secure=secure(request), max_age=3600)  # fmt: skip
        return resp

    async def sign_in_get(request: Request) -> Response:
        if await session_of(request) is not None:
            return RedirectResponse("/queue", 303)
        return sign_in_page(request)

    async def sign_in_post(request: Request) -> Response:
        form = await request.form()
        sent, cookie = form.get("csrf"), request.cookies.get(PRE_COOKIE)
        if not (isinstance(sent, str) and cookie and secrets.compare_digest(sent, cookie)):
            return sign_in_page(request, "This form expired or did not come from this page: "
                                "sign in again.", 403)  # fmt: skip
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        client = request.client.host if request.client else "?"
        try:
            token, session = await run_in_threadpool(wb.users.sign_in, username.strip().lower(),
                                                     password, client)  # fmt: skip
        except AuthError as exc:
            wb.metrics.sign_in_failures.inc()
            return sign_in_page(request, str(exc), 401)
        await run_in_threadpool(wb.store.audit, session.user.username, "signed in")
        resp = RedirectResponse("/queue", 303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="lax", secure=secure(request),
                        max_age=int((session.expires_ts_ms - now_ms()) / 1000))  # fmt: skip
        resp.delete_cookie(PRE_COOKIE)
        return resp

    async def sign_out(request: Request) -> Response:
        session = await session_of(request)
        form = await request.form()
        if session is not None and csrf_ok(session, _str(form.get("csrf"))):
            await run_in_threadpool(wb.users.sign_out, request.cookies.get(COOKIE))
            await run_in_threadpool(wb.store.audit, session.user.username, "signed out")
        resp = RedirectResponse("/sign-in", 303)
        resp.delete_cookie(COOKIE)
        return resp

    async def queue(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return RedirectResponse("/sign-in", 303)
        user, q = session.user, request.query_params
        hubs = user.visible_hubs()
        hub = q.get("hub", "")
        if hub:
            if not user.may_see(hub):
                return message(request, f"You have no access to hub {hub}.", 403, session)
            hubs = [hub]
        status = q.get("status", "")
        if status and status not in STATUSES:
            return message(request, f"Unknown status {status!r}: use one of "
                           f"{', '.join(STATUSES)}.", 400, session)  # fmt: skip
        sort = q.get("sort", "risk")
        if sort not in SORTS:
            return message(request, f"Unknown sort {sort!r}: use risk or age.", 400, session)
        lane = q.get("lane", "")
        if lane and lane not in ("hold", "review"):
            return message(request, f"Unknown lane {lane!r}: use hold or review.", 400, session)
        selection = q.get("selection", "")
        if selection and selection not in SELECTIONS:
            return message(request, f"Unknown selection {selection!r}: use one of "
                           f"{', '.join(SELECTIONS)}.", 400, session)  # fmt: skip
        statuses: tuple[Status, ...] = (status,) if status else OPEN
        f = QueueFilter(hubs=hubs, statuses=statuses, lane=lane,
                        reason=q.get("reason", "").strip().upper(), selection=selection,
                        shipper=q.get("shipper", "").strip(), sort=sort)  # fmt: skip
        try:
            got = await run_in_threadpool(wb.store.queue, f, q.get("after", ""))
        except CaseError as exc:
            return message(request, str(exc), 400, session)
        counts = await run_in_threadpool(wb.store.counts, user.visible_hubs())
        params = {k: v for k, v in q.items() if k != "after" and v}
        return page("queue.html", session=session, cases=got.cases, next=got.next_cursor,
                    counts=counts, now=now_ms(), filt=f, hub=hub, status=status,
                    params=params, statuses=STATUSES, selections=SELECTIONS,
                    sla=wb.sla_label, first_page=not q.get("after"))  # fmt: skip

    async def parcel(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return RedirectResponse("/sign-in", 303)
        pid = request.path_params["parcel_id"]
        case = await run_in_threadpool(wb.store.case, pid)
        if case is None or not session.user.may_see(case.hub):
            return message(request, f"No held parcel {pid!r} in your hubs.", 404, session)
        return await render_parcel(request, session, case)

    async def render_parcel(request: Request, session: Session, case: Case, error: str = "",
                            status: int = 200) -> Response:  # fmt: skip
        user = session.user
        hold = msgspec.json.decode(case.hold)
        manifest = hold.get("manifest") or {}
        if user.sees_personal_data and manifest.get("consignee"):
            await run_in_threadpool(wb.store.audit, user.username, "viewed personal data",
                                    case.parcel_id, "consignee")  # fmt: skip
        else:
            manifest = {k: v for k, v in manifest.items() if k != "consignee"}
        outcomes = await run_in_threadpool(wb.store.outcomes_of, case.parcel_id)
        earlier = await run_in_threadpool(wb.store.shipper_history, case.shipper_id)
        earlier = [(c, o) for c, o in earlier if c.parcel_id != case.parcel_id]
        audit = await run_in_threadpool(wb.store.audit_log, case.parcel_id, 30)
        state = None
        if wb.history is not None:
            seller = manifest.get("seller") or {}
            seller_key = f"{seller.get('id')}@{seller.get('marketplace')}" if seller else ""
            try:
                state = await wb.history(case.shipper_id, seller_key,
                                         _address_key(hold.get("manifest")))  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the page works without it
                log.warning("state store unavailable for the parcel page: %s",
                            type(exc).__name__)  # fmt: skip
        return page("parcel.html", status, session=session, case=case, hold=hold,
                    manifest=manifest, outcomes=outcomes, earlier=earlier, audit=audit,
                    state=state, error=error, now=now_ms(), outcome_names=OUTCOMES,
                    findings=FINDINGS, users=await _assignable(session, case))  # fmt: skip

    async def _assignable(session: Session, case: Case) -> list[str]:
        if session.user.role != "supervisor":
            return []
        people = await run_in_threadpool(wb.users.all)
        return [u.username for u in people if not u.disabled and u.can_work
                and u.may_see(case.hub)]  # fmt: skip

    async def action(request: Request) -> Response:
        session = await session_of(request)
        if session is None:
            return RedirectResponse("/sign-in", 303)
        pid, verb = request.path_params["parcel_id"], request.path_params["action"]
        try:
            form = await request.form()
        except Exception:  # noqa: BLE001 - a malformed body
            return message(request, "The form could not be read: reload the page and "
                           "try again.", 400, session)  # fmt: skip
        if not csrf_ok(session, _str(form.get("csrf"))):
            return message(request, "This form expired or did not come from the workbench: "
                           "reload the page and try again.", 403, session,
                           back=f"/parcels/{pid}")  # fmt: skip
        case = await run_in_threadpool(wb.store.case, pid)
        user = session.user
        if case is None or not user.may_see(case.hub):
            return message(request, f"No held parcel {pid!r} in your hubs.", 404, session)
        try:
            if verb == "claim" and user.can_work:
                await run_in_threadpool(wb.store.claim, pid, user.username)
            elif verb == "assign" and user.role == "supervisor":
                to = _str(form.get("to")).strip()
                if to not in await _assignable(session, case):
                    raise CaseError(f"{to or 'nobody'} cannot be assigned cases of {case.hub}")
                await run_in_threadpool(wb.store.assign, pid, to, user.username)
            elif verb == "reopen" and user.role == "supervisor":
                await run_in_threadpool(wb.store.reopen, pid, _str(form.get("reason")),
                                        user.username)  # fmt: skip
            elif verb == "outcome" and user.can_work:
                args = _outcome_form(form)
                if case.assignee and case.assignee != user.username and (
                        user.role != "supervisor"):  # fmt: skip
                    raise CaseError(f"{case.assignee} has claimed this parcel")
                _exam, recorded = await run_in_threadpool(
                    wb.store.record, pid, args["revision"], args["outcome"], args["finding"],
                    args["recovered_usd"], args["notes"], user.username)  # fmt: skip
                if recorded:
                    wb.metrics.outcomes.labels(args["outcome"]).inc()
                    wb.metrics.hold_to_outcome.observe(max(now_ms() - case.held_ts_ms, 0) / 1000)
                    wb.wake_sender()
            else:
                return message(request, "You cannot do that.", 403, session,
                               back=f"/parcels/{pid}")  # fmt: skip
        except CaseError as exc:
            fresh = await run_in_threadpool(wb.store.case, pid)
            return await render_parcel(request, session, fresh or case, str(exc), 409)
        return RedirectResponse(f"/parcels/{pid}", 303)

    async def metrics(_request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, wb.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def health(_request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def ready(_request: Request) -> Response:
        def check() -> str | None:
            try:
                wb.store.hubs()  # the case store answers
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                return f"case store unavailable ({type(exc).__name__})"
            return wb.problem()

        why = await run_in_threadpool(check)
        if why:
            return Response(f"not ready: {why}\n", status_code=503, media_type="text/plain")
        return Response("ready\n", media_type="text/plain")

    async def home(_request: Request) -> Response:
        return RedirectResponse("/queue", 303)

    async def not_found(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        text = "No such page." if code == 404 else "That request is not allowed here."
        return message(request, text, code)

    async def server_error(request: Request, exc: Exception) -> Response:
        ref = uuid.uuid4().hex[:8]
        log.error("workbench error %s on %s: %s", ref, request.url.path, type(exc).__name__,
                  exc_info=exc)  # fmt: skip
        return message(request, f"Something went wrong (reference {ref}); the error is in "
                       "the workbench's log. Try again.", 500)  # fmt: skip

    routes = [
        Route("/", home),
        Route("/sign-in", sign_in_get, methods=["GET"]),
        Route("/sign-in", sign_in_post, methods=["POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
        Route("/queue", queue),
        Route("/parcels/{parcel_id:str}", parcel),
        Route("/parcels/{parcel_id:str}/{action:str}", action, methods=["POST"]),
        Route("/metrics", metrics),
        Route("/healthz", health),
        Route("/readyz", ready),
    ]
    return Starlette(routes=routes, exception_handlers={
        404: not_found, 405: not_found, Exception: server_error})  # fmt: skip


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _outcome_form(form: Any) -> dict[str, Any]:
    """The outcome form's fields, checked; a CaseError names what to fix."""
    outcome, finding = _str(form.get("outcome")), _str(form.get("finding")) or "none"
    if outcome not in OUTCOMES:
        raise CaseError("choose the outcome: clean, violation or seized")
    if finding not in FINDINGS:
        raise CaseError(f"unknown finding {finding!r}")
    if outcome == "clean" and finding != "none":
        raise CaseError("a clean examination has no finding: choose 'none'")
    raw = _str(form.get("recovered_usd")).strip() or "0"
    try:
        recovered = float(raw)
    except ValueError:
        raise CaseError(f"duty or value recovered: {raw!r} is not a number (USD)") from None
    if not math.isfinite(recovered) or recovered < 0 or recovered > 1e9:
        raise CaseError("duty or value recovered: a number of USD from 0 to 1,000,000,000")
    notes = _str(form.get("notes"))
    if len(notes) > MAX_NOTES:
        raise CaseError(f"notes: at most {MAX_NOTES} characters ({len(notes)} sent)")
    try:
        revision = int(_str(form.get("revision")))
    except ValueError:
        raise CaseError("the form is incomplete: reload the page and try again") from None
    return {"outcome": outcome, "finding": finding, "recovered_usd": recovered,
            "notes": notes, "revision": revision}  # fmt: skip


def _address_key(manifest: dict[str, Any] | None) -> str:
    if not manifest or not manifest.get("consignee"):
        return ""
    from parcel_stream.features import address_key
    from parcel_stream.model import Address

    try:
        addr = msgspec.convert(manifest["consignee"]["address"], Address)
    except (msgspec.ValidationError, KeyError, TypeError):
        return ""
    return address_key(addr)
