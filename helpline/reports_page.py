"""The admin reports page ``GET /agent/reports``: the numbers of :func:`state.reports.compute` for a
window chosen with ``?since=YYYY-MM-DD&until=YYYY-MM-DD`` (UTC days, ``until`` included; default
the last 30 days). Registered by :meth:`helpline.inbox.InboxRoutes.add_to`.

The route passes the inbox's checks (:meth:`helpline.inbox.InboxRoutes.page`: the session) and then
the role: an agent who is not an admin gets 403 "admins only", like the admin pages. Reads only;
a malformed date is 400 with the reason.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from aiohttp import web

from state import reports
from state.agents import LoginSession

if TYPE_CHECKING:
    from helpline.inbox import InboxRoutes

PATH = "/agent/reports"


def _day(value: str | None, name: str) -> datetime | None:
    """``?name=YYYY-MM-DD`` as midnight UTC; 400 naming the parameter when malformed."""
    if not value:
        return None
    try:
        if len(value) != 10:
            raise ValueError(value)
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a date written YYYY-MM-DD, got {value[:40]!r}") from None


class ReportsPage:
    """``GET /agent/reports`` for admins."""

    def __init__(self, inbox: InboxRoutes) -> None:
        self.inbox = inbox

    def add_to(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.inbox.page(self.show))

    async def show(self, request: web.Request, login: LoginSession) -> web.StreamResponse:
        from helpline.inbox import render  # here: helpline.inbox imports this module

        if not login.agent.is_admin:
            raise web.HTTPForbidden(text="admins only")
        since = _day(request.query.get("since"), "since")
        until = _day(request.query.get("until"), "until")
        try:
            found = await reports.compute(self.inbox.rt.db, since, until + timedelta(days=1) if until else None)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return render(
            "reports.html", login=login, r=found,
            since=found.since.strftime("%Y-%m-%d"), until=(found.until - timedelta(seconds=1)).strftime("%Y-%m-%d"),
        )
