"""The agent inbox at ``/agent``: login, the queue, the ticket page and its actions (aiohttp routes).

Server-rendered Jinja2 templates (``helpline/templates/agent``, autoescape on for every template),
one stylesheet and one small script (``static/agent.js``: the live queue over ``GET /agent/live``,
see :mod:`helpline.inbox_live`); no inline script, no asset from a third party, no build step. Every request under
``/agent`` except the login form and the stylesheet checks, in this order:

1. the session cookie (``helpline_agent``: HttpOnly, SameSite=Strict, path ``/agent``, Secure over
   https; idle and absolute expiry in settings; a new session id at every login) -- a page without
   one redirects to the login form, any other request gets 403;
2. on every POST, the session's CSRF token (form field ``csrf_token``, compared in constant time)
   and, when the browser sends one, an ``Origin`` of this server (403 otherwise);
3. the caller's right to the ticket, decided in :mod:`state.inbox` (a ticket the caller may not
   read is 404, the same as one that does not exist).

The login is rate-limited per client address and per email (settings ``login_*``); password checks
run off the event loop. A login redirect goes only to a path under ``/agent``. Pages send a
Content-Security-Policy with scripts and sockets from this server only (no inline script) and
``img-src 'self'``, so a markdown image or any
HTML in customer text loads nothing (it is escaped anyway), and Unicode bidi controls in customer
text are shown as visible codes (:func:`bidi_safe`), so they cannot reorder what the agent reads.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import hdrs, web

from config.settings import Settings
from helpline.clients import client_address, is_https
from helpline.inbox_live import InboxFeed, LiveQueue
from helpline.runtime import Runtime
from state import agents as accounts
from state import inbox
from state.agents import AgentView, LoginSession
from state.models import Message

log = logging.getLogger(__name__)

COOKIE = "helpline_agent"
STATIC_DIR = Path(str(resources.files("helpline") / "static"))
AGENT_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""Scripts only from this server's files (no inline script), sockets only to this server, images from
this server only, forms post only here, never framed."""
BIDI_CONTROLS = {c: f"[U+{c:04X}]" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}
"""Embeddings, overrides, isolates and marks (Unicode TR9): shown as codes, never applied."""

Handler = Callable[[web.Request, LoginSession], Awaitable[web.StreamResponse]]
INBOX_LIVE = web.AppKey("inbox_live", LiveQueue)
"""The ``/agent/live`` handler of an application (its limits and open sockets, for tests)."""
BOT_MODE: ContextVar[str | None] = ContextVar("bot_mode", default=None)
"""The kill switch's mode for the page being rendered (set per request by :mod:`helpline.inbox_admin`)."""


def bidi_safe(text: Any) -> str:
    """``text`` with every Unicode bidi control replaced by a visible ``[U+202E]``-style code
    (autoescaping still applies after this)."""
    return str(text).translate(BIDI_CONTROLS)


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return ""
    seconds = max(0, int((datetime.now(timezone.utc) - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
    return f"{seconds // 86400} d ago"


def _span(seconds: int) -> str:
    if seconds < 3600:
        return f"{max(1, seconds // 60)} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def sla_due(due: datetime | None, breached: datetime | None) -> str:
    """``due in 23 min`` / ``overdue 5 min`` for the earliest running SLA target (wall-clock time to
    the business-time due instant), with `` (breached)`` after a breach; ``breached`` or ``—`` when no
    target runs (paused while waiting on the customer, or none). agent.js says the same in the page."""
    if due is None:
        return "breached" if breached is not None else "\u2014"
    seconds = int((due - datetime.now(timezone.utc)).total_seconds())
    text = ("overdue " if seconds < 0 else "due in ") + _span(abs(seconds))
    return text + (" (breached)" if breached is not None else "")


_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("helpline", "templates/agent"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
)
_templates.filters["bidi_safe"] = bidi_safe
_templates.filters["ago"] = _ago
_templates.globals["sla_due"] = sla_due


def render(name: str, status: int = 200, **context: Any) -> web.Response:
    context.setdefault("login", None)
    context.setdefault("error", None)
    context.setdefault("notice", None)
    context.setdefault("bot_mode", BOT_MODE.get())  # base.html: the "bot is off" banner
    response = web.Response(
        text=_templates.get_template(name).render(**context), status=status, content_type="text/html"
    )
    _no_store(response)
    return response


def _no_store(response: web.StreamResponse) -> None:
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    response.headers["Content-Security-Policy"] = AGENT_CSP


async def read_form(request: web.Request) -> Any:
    """The posted form; 400 for a body that cannot be decoded (an unknown charset, bytes that are
    not UTF-8) instead of an error deep in a handler."""
    try:
        return await request.post()
    except (UnicodeDecodeError, LookupError, ValueError) as exc:
        raise web.HTTPBadRequest(text=f"unreadable form: {type(exc).__name__}") from None


def text_field(form: Any, name: str) -> str:
    """Form field ``name`` as text ('' when absent); 400 when it is a file upload."""
    value = form.get(name, "")
    if not isinstance(value, str):
        raise web.HTTPBadRequest(text=f"field {name} must be text, not a file")
    return value


async def send_reply(rt: Runtime, ticket_id: int, agent: AgentView, text: str) -> tuple[Message, bool]:
    """An agent's reply, the one way for every caller (the ticket page and the JSON API): stored and
    queued in the outbox by :func:`state.inbox.reply`, then a first delivery attempt right after
    its commit. Returns the message and whether that attempt delivered it (when not, the outbox
    retries). Raises :class:`state.inbox.InboxError`."""
    message, entry_id = await inbox.reply(
        rt.db, ticket_id, agent, text, lease_s=rt.settings.outbox_lease_s, sla=rt.sla.config
    )
    return message, await rt.outbox.send_now(entry_id, message)


async def resolve_ticket(rt: Runtime, ticket_id: int, agent: AgentView) -> None:
    """An agent resolves a ticket, the one way for every caller: :func:`state.inbox.resolve`, then
    its CSAT prompt sent to the customer (the first resolve of a ticket; see :mod:`state.csat`) and
    its ``ticket.resolved`` webhook event (when one is configured) handed to the job queue.
    Raises :class:`state.inbox.InboxError`."""
    done = await inbox.resolve(
        rt.db, ticket_id, agent, webhooks_enabled=rt.webhooks.enabled, lease_s=rt.settings.outbox_lease_s
    )
    if done.csat_prompt is not None:
        await rt.outbox.send_now(done.csat_prompt.entry_id, done.csat_prompt.message)
    if done.webhook_event is not None:
        await rt.webhooks.queue(done.webhook_event)


class InboxRoutes:
    """The ``/agent`` routes of one application; ``runtime`` is read when a request comes (the
    runtime opens after the routes are registered)."""

    def __init__(self, settings: Settings, runtime: Callable[[], Runtime], proxies: tuple[Any, ...]) -> None:
        self.settings = settings
        self._runtime = runtime
        self.proxies = proxies
        self.live = LiveQueue(self._session, self._same_origin, lambda: self.feed)

    @property
    def rt(self) -> Runtime:
        return self._runtime()

    @property
    def feed(self) -> InboxFeed:
        """This process's live-queue feed (wake-ups and the shared events reader)."""
        return self.rt.inbox_feed

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/agent/login", self.login_form)
        app.router.add_post("/agent/login", self.login)
        app.router.add_post("/agent/logout", self.page(self.logout, post=True))
        app.router.add_get("/agent", self.page(self.queue))
        app.router.add_get("/agent/live", self.page(self.live.handle))
        app.on_shutdown.append(self.live.close_all)
        app[INBOX_LIVE] = self.live
        app.router.add_get("/agent/tickets/{ticket_id:\\d{1,18}}", self.page(self.ticket))
        app.router.add_post("/agent/tickets/{ticket_id:\\d{1,18}}/{action}", self.page(self.act, post=True))
        app.router.add_static("/agent/static/", STATIC_DIR, show_index=False)
        from helpline.inbox_admin import AdminRoutes  # here: it imports this module

        AdminRoutes(self).add_to(app)  # /agent/admin: kill switch, agents, settings
        from helpline.reports_page import ReportsPage  # here: it imports this module

        ReportsPage(self).add_to(app)  # /agent/reports: CSAT and support numbers, for admins

    # --- the checks every request passes ---------------------------------------------------------

    def page(self, handler: Handler, *, post: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def checked(request: web.Request) -> web.StreamResponse:
            login = await self._session(request)
            if login is None:
                if post:
                    raise web.HTTPForbidden(text="log in first")
                target = request.path_qs if request.path_qs.startswith("/agent") else "/agent"
                raise web.HTTPSeeOther(f"/agent/login?next={quote(target, safe='')}")
            if post:
                form = await read_form(request)
                token = form.get("csrf_token")
                if not isinstance(token, str) or not hmac.compare_digest(token.encode(), login.csrf_token.encode()):
                    raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page and try again")
                if not self._same_origin(request):
                    raise web.HTTPForbidden(text="request from another site refused")
            return await handler(request, login)  # render() sets no-store and the CSP

        return checked

    async def _session(self, request: web.Request) -> LoginSession | None:
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        return await accounts.resume_session(self.rt.db, token, idle_s=self.settings.agent_session_idle_s)

    def _same_origin(self, request: web.Request) -> bool:
        """``Sec-Fetch-Site``, when sent, must say ``same-origin`` (or ``none``: typed by the user).
        No ``Origin``: not a cross-site browser request (scripts and old browsers send neither).
        ``Origin: null``: what a browser sends for a form posted from a page with
        ``Referrer-Policy: no-referrer`` (ours), accepted only with that ``Sec-Fetch-Site`` (which
        pages cannot forge). Any other ``Origin`` must be this server."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return True
        if origin.strip().lower() == "null":
            return site is not None
        return urlsplit(origin.strip().lower()).netloc == request.host.lower()

    def _https(self, request: web.Request) -> bool:
        if self.settings.cookie_secure is not None:
            return self.settings.cookie_secure
        return is_https(request, self.proxies)

    # --- login -------------------------------------------------------------------------------------

    @staticmethod
    def _next(value: Any) -> str:
        """Where to go after login: a path under ``/agent`` on this server, nothing else."""
        if not isinstance(value, str) or not value.startswith("/agent") or "\\" in value:
            return "/agent"
        parts = urlsplit(value)
        if parts.scheme or parts.netloc or value.startswith("//") or any(ord(c) < 0x21 for c in value):
            return "/agent"
        return value

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if await self._session(request) is not None:
            raise web.HTTPSeeOther(self._next(request.query.get("next")))
        return render("login.html", next=self._next(request.query.get("next")), email="")

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="request from another site refused")
        form = await read_form(request)
        email = text_field(form, "email")[: accounts.MAX_EMAIL_CHARS + 1]
        password = text_field(form, "password")
        target = self._next(form.get("next"))
        limiter = self.rt.hot.limiter
        window = self.settings.login_window_s
        address = client_address(request, self.proxies)

        def refused(message: str, status: int) -> web.Response:
            return render("login.html", status=status, error=message, next=target, email=email)

        if not await limiter.hit(f"login-address:{address}", self.settings.login_attempts_per_address, window):
            log.warning("agent login refused: too many attempts from %s", address)
            return refused("Too many login attempts from your network; try again later.", 429)
        # Counted before the password is checked, in one step: guesses sent at the same moment
        # cannot all pass a check made before any of them was counted.
        email_key = f"login-email:{email.strip().lower()}"
        if not await limiter.hit(email_key, self.settings.login_attempts_per_email, window):
            log.warning("agent login refused: too many attempts for one email (from %s)", address)
            return refused("Too many login attempts for this account; try again later.", 429)
        found = await accounts.find_login(self.rt.db, email)
        if found is None or len(password) > accounts.MAX_PASSWORD_CHARS:
            await asyncio.to_thread(accounts.dummy_verify, password)
            ok = False
        else:
            ok = await asyncio.to_thread(accounts.verify_password, found[1], password)
        if not ok or found is None:
            log.info("agent login failed from %s", address)
            return refused("Wrong email or password.", 401)
        agent_id, _, needs_rehash = found
        if needs_rehash:
            await accounts.rehash(self.rt.db, agent_id, password)
        token = await accounts.start_session(
            self.rt.db, agent_id, absolute_s=self.settings.agent_session_max_s, replaces=request.cookies.get(COOKIE)
        )
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            COOKIE, token, path="/agent", httponly=True, samesite="Strict", secure=self._https(request),
            max_age=self.settings.agent_session_max_s,
        )
        _no_store(response)
        log.info("agent %s logged in from %s", agent_id, address)
        raise response

    async def logout(self, request: web.Request, login: LoginSession) -> web.StreamResponse:
        await accounts.end_session(self.rt.db, request.cookies.get(COOKIE, ""))
        response = web.HTTPSeeOther("/agent/login")
        response.del_cookie(COOKIE, path="/agent")
        raise response

    # --- pages -------------------------------------------------------------------------------------

    async def queue(self, request: web.Request, login: LoginSession) -> web.StreamResponse:
        view = request.query.get("view", "all")
        channel = request.query.get("channel") or None
        priority = request.query.get("priority") or None
        language = request.query.get("language") or None
        # Read before the queue: every event in it shows in the page, later ones reach the socket.
        cursor = (await self.feed.position()).encode()
        try:
            items = await inbox.queue(self.rt.db, login.agent, view=view, channel=channel, priority=priority,
                                      language=language)
        except inbox.InboxError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        channels = sorted(self.rt.outbox.senders.keys() - set(inbox.HIDDEN_CHANNELS))
        return render(
            "queue.html", login=login, items=items, view=view, views=inbox.QUEUE_VIEWS, channel=channel,
            channels=channels, priority=priority, priorities=inbox.PRIORITIES, cursor=cursor, language=language,
            languages=sorted({*self.settings.supported_languages, *self.settings.language_candidates}),
            notice=request.query.get("done") and _DONE.get(request.query["done"]),
        )

    async def ticket(self, request: web.Request, login: LoginSession, *, error: str | None = None,
                     status: int = 200) -> web.Response:
        ticket_id = int(request.match_info["ticket_id"])
        try:
            view = await inbox.ticket_view(self.rt.db, ticket_id, login.agent)
        except inbox.NotFound:
            raise web.HTTPNotFound(text="no such ticket") from None
        return render(
            "ticket.html", status=status, login=login, t=view, error=error,
            owns=view.assignee_id == login.agent.id or login.agent.is_admin,
            priorities=inbox.PRIORITIES, agents=await inbox.active_agents(self.rt.db),
            max_text=inbox.MAX_AGENT_TEXT,
            notice=request.query.get("done") and _DONE.get(request.query["done"]),
        )

    async def act(self, request: web.Request, login: LoginSession) -> web.StreamResponse:
        ticket_id = int(request.match_info["ticket_id"])
        action = request.match_info["action"]
        form = await read_form(request)
        agent = login.agent
        db = self.rt.db
        try:
            if action == "claim":
                await inbox.claim(db, ticket_id, agent)
            elif action == "reply":
                await send_reply(self.rt, ticket_id, agent, text_field(form, "text"))
            elif action == "note":
                await inbox.note(db, ticket_id, agent, text_field(form, "text"))
            elif action == "transfer":
                target = text_field(form, "agent_id")
                if not (target.isascii() and target.isdigit()) or len(target) > 18:
                    raise inbox.InboxError("choose an agent to transfer to")
                await inbox.transfer(db, ticket_id, agent, int(target))
            elif action == "priority":
                await inbox.set_priority(db, ticket_id, agent, text_field(form, "priority"), sla=self.rt.sla.config)
            elif action == "resolve":
                await resolve_ticket(self.rt, ticket_id, agent)
            elif action == "reopen":
                await inbox.reopen(db, ticket_id, agent, sla=self.rt.sla.config)
            elif action == "hand-back":
                await inbox.hand_back(db, ticket_id, agent)
            else:
                raise web.HTTPNotFound(text="no such action")
        except inbox.NotFound:
            raise web.HTTPNotFound(text="no such ticket") from None
        except inbox.InboxError as exc:
            return await self.ticket(request, login, error=str(exc), status=exc.status)
        log.info("agent %s: %s on ticket %s", agent.id, action, ticket_id)
        await self.feed.notify()  # committed: every live queue re-reads (never raises)
        if action in ("resolve", "hand-back", "transfer"):
            raise web.HTTPSeeOther(f"/agent?done={action}")
        raise web.HTTPSeeOther(f"/agent/tickets/{ticket_id}?done={action}")


_DONE = {
    "claim": "You own this ticket now.",
    "reply": "Reply sent to the customer.",
    "note": "Note added (the customer cannot see it).",
    "transfer": "Ticket transferred.",
    "priority": "Priority changed.",
    "resolve": "Ticket resolved.",
    "reopen": "Ticket reopened; you own it.",
    "hand-back": "Ticket handed back to the bot: it answers the customer's next message.",
}
