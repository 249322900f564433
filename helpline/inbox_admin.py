"""The inbox's admin pages under ``/agent/admin``: the kill switch, agent accounts and the effective
settings (read-only). Registered by :meth:`helpline.inbox.InboxRoutes.add_to`.

Every route passes the inbox's checks (:meth:`InboxRoutes.page`: the session; on POST the CSRF
token and the ``Origin``) and then the caller's role: an agent who is not an admin gets 403 "admins
only" (the pages' existence is no secret: the docs list them; a ticket answers 404 instead because
its id says something about the business). POSTs redirect (303) on success; a refused one renders
its page again with the reason (400 for bad input, 404 for an unknown agent, 409 for a guard).

The kill switch is written by :func:`state.flags.set_agent_mode`, the same function as
``helpline agent-mode``: the database holds it and every process's :class:`state.flags.KillSwitch`
re-reads it at most once a second, so a switch reaches every process sharing the database within
a second (with or without Redis). This module also sets, per request under ``/agent``, the mode the
banner of every inbox page shows (:data:`helpline.inbox.BOT_MODE`).

Must not hold state of its own: accounts live in :mod:`state.agents` / :mod:`state.agent_admin`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from config.redact import redacted_settings
from state import agent_admin
from state import agents as accounts
from state.agents import LoginSession
from state.flags import AGENT_MODES, set_agent_mode

from helpline.inbox import BOT_MODE, Handler, InboxRoutes, read_form, render, text_field

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500
MAX_NAME_CHARS = 200  # agents.display_name
HISTORY = 20
"""Kill-switch changes the page lists, newest first."""

_DONE = {
    "switch": "Kill switch changed. Every process obeys it within a second.",
    "add": "Agent added: they can log in now.",
    "disable": "Agent disabled: their sessions ended.",
    "enable": "Agent enabled: they can log in again.",
    "password": "Password changed: the agent's sessions ended.",
    "role": "Role changed.",
}


class AdminRoutes:
    """The ``/agent/admin`` routes, checked by ``inbox``'s :meth:`InboxRoutes.page` first."""

    def __init__(self, inbox: InboxRoutes) -> None:
        self.inbox = inbox

    def add_to(self, app: web.Application) -> None:
        page = self.inbox.page
        app.router.add_get("/agent/admin", page(self._admin(self.home)))
        app.router.add_get("/agent/admin/kill-switch", page(self._admin(self.kill_switch)))
        app.router.add_post("/agent/admin/kill-switch", page(self._admin(self.switch), post=True))
        app.router.add_get("/agent/admin/agents", page(self._admin(self.agents)))
        for action in ("add", "disable", "enable", "password", "role"):
            app.router.add_post(f"/agent/admin/agents/{action}", page(self._admin(self.change_agent), post=True))
        app.router.add_get("/agent/admin/settings", page(self._admin(self.settings)))
        app.middlewares.append(self._bot_mode_middleware())

    # --- checks ------------------------------------------------------------------------------------

    @staticmethod
    def _admin(handler: Handler) -> Handler:
        async def checked(request: web.Request, login: LoginSession) -> web.StreamResponse:
            if not login.agent.is_admin:
                raise web.HTTPForbidden(text="admins only")
            return await handler(request, login)

        return checked

    def _bot_mode_middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def bot_mode(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
            if not request.path.startswith("/agent") or request.path.startswith(("/agent/static/", "/agent/api/")):
                return await handler(request)
            # The mode this process obeys: the kill switch's cached read (at most one query a
            # second per process), "disabled" when the switch cannot be read.
            token = BOT_MODE.set((await self.inbox.rt.conversations.agent_mode()).value)
            try:
                return await handler(request)
            finally:
                BOT_MODE.reset(token)

        return bot_mode

    # --- pages ---------------------------------------------------------------------------------------

    async def home(self, request: web.Request, login: LoginSession) -> web.StreamResponse:
        raise web.HTTPSeeOther("/agent/admin/kill-switch")

    async def kill_switch(self, request: web.Request, login: LoginSession, *, error: str | None = None,
                          status: int = 200, reason: str = "") -> web.Response:
        db = self.inbox.rt.db
        state = await agent_admin.switch_state(db)
        effective = state.mode or self.inbox.settings.agent_mode.value
        return render(
            "admin_kill_switch.html", status=status, login=login, error=error, section="kill-switch",
            state=state, effective=effective, configured=self.inbox.settings.agent_mode.value,
            # The database's value, not this process's cached read: right after a switch the page
            # shows what every process obeys within the second.
            bot_mode=effective, history=await agent_admin.switch_history(db, HISTORY),
            reason=reason, max_reason=MAX_REASON_CHARS, notice=_notice(request),
        )

    async def switch(self, request: web.Request, login: LoginSession) -> web.StreamResponse:
        form = await read_form(request)
        mode = text_field(form, "mode")
        reason = text_field(form, "reason").replace("\x00", "").strip()
        if mode not in AGENT_MODES:
            return await self.kill_switch(request, login, status=400, reason=reason,
                                          error=f"mode must be one of {', '.join(AGENT_MODES)}")
        if not reason:
            return await self.kill_switch(request, login, status=400, error="say why (the reason is recorded)")
        if len(reason) > MAX_REASON_CHARS:
            return await self.kill_switch(
                request, login, status=400, reason=reason[:MAX_REASON_CHARS],
                error=f"the reason has {len(reason):,} characters; at most {MAX_REASON_CHARS}")
        await set_agent_mode(self.inbox.rt.db, mode, actor=agent_admin.actor_of(login.agent), reason=reason)
        log.warning("kill switch set to %s by agent %s from the inbox", mode, login.agent.id)
        raise web.HTTPSeeOther("/agent/admin/kill-switch?done=switch")

    async def agents(self, request: web.Request, login: LoginSession, *, error: str | None = None,
                     status: int = 200, form: dict[str, str] | None = None) -> web.Response:
        return render(
            "admin_agents.html", status=status, login=login, error=error, section="agents",
            rows=await agent_admin.agents_with_activity(self.inbox.rt.db), roles=accounts.ROLES,
            form=form or {"email": "", "name": "", "role": "agent"}, min_password=accounts.MIN_PASSWORD_CHARS,
            max_password=accounts.MAX_PASSWORD_CHARS, notice=_notice(request),
        )

    async def change_agent(self, request: web.Request, login: LoginSession) -> web.StreamResponse:
        action = request.path.rsplit("/", 1)[1]
        form = await read_form(request)
        db = self.inbox.rt.db
        kept: dict[str, str] | None = None
        try:
            if action == "add":
                email, name, role = text_field(form, "email"), text_field(form, "name").strip(), text_field(form, "role")
                kept = {"email": email[:accounts.MAX_EMAIL_CHARS], "name": name[:MAX_NAME_CHARS], "role": role}
                if len(name) > MAX_NAME_CHARS:
                    raise accounts.AgentError(f"the name has {len(name):,} characters; at most {MAX_NAME_CHARS}")
                added = await accounts.add_agent(db, email, _new_password(form), role=role, display_name=name or None)
                await agent_admin.record(db, "add", added, by=login.agent)
                target = added.id
            else:
                target = _agent_id(form)
                if action == "disable":
                    await agent_admin.set_active(db, target, False, by=login.agent)
                elif action == "enable":
                    await agent_admin.set_active(db, target, True, by=login.agent)
                elif action == "role":
                    await agent_admin.set_role(db, target, text_field(form, "role"), by=login.agent)
                else:  # password
                    found = await agent_admin.find(db, target)
                    if found is None:
                        raise agent_admin.UnknownAgent(f"no agent with id {target}")
                    await accounts.set_password(db, found.email, _new_password(form))
                    await agent_admin.record(db, "password", found, by=login.agent)
        except agent_admin.UnknownAgent as exc:
            return await self.agents(request, login, error=str(exc), status=404)
        except agent_admin.GuardError as exc:
            return await self.agents(request, login, error=str(exc), status=409)
        except accounts.AgentError as exc:
            return await self.agents(request, login, error=str(exc), status=400, form=kept)
        log.info("admin %s: %s on agent %s", login.agent.id, action, target)
        if action == "password" and target == login.agent.id:
            raise web.HTTPSeeOther("/agent/login")  # your own sessions ended with the change
        raise web.HTTPSeeOther(f"/agent/admin/agents?done={action}")

    async def settings(self, request: web.Request, login: LoginSession) -> web.StreamResponse:
        return render("admin_settings.html", login=login, section="settings",
                      rows=redacted_settings(self.inbox.settings))


def _notice(request: web.Request) -> str | None:
    return _DONE.get(request.query.get("done", ""))


def _agent_id(form: Any) -> int:
    value = text_field(form, "agent_id")
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise accounts.AgentError("choose an agent")
    return int(value)


def _new_password(form: Any) -> str:
    password = text_field(form, "password")
    if password != text_field(form, "password_again"):
        raise accounts.AgentError("the two passwords differ")
    return accounts.check_password(password)
