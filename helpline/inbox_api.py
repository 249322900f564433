"""The agent inbox's JSON API under ``/agent/api/``: the queue, one ticket, and every agent action,
for scripts and for help desks that work Helpline tickets from their own tool (docs/agent-api.md).

Every route but the OpenAPI document needs ``Authorization: Bearer <token>`` with a token from
``helpline agents token EMAIL`` (:mod:`state.api_tokens`); the token acts as its agent, with that
agent's role. No cookie is ever read here, so a browser page on another site cannot make a request
that carries the agent's credentials, and no CSRF token is needed. Who may read or change which
ticket is decided in :mod:`state.inbox`, exactly as for the pages (a ticket the caller may not read
is 404, like one that does not exist).

Requests and responses are pydantic models; the routes are one table (:data:`ENDPOINTS`), and the
OpenAPI 3.1 document at ``/agent/api/openapi.json`` (public: it describes routes, not data) is built
from both (:func:`openapi_document`), so it cannot drift from what is served.

Every answer is JSON, errors too: ``{"error": {"code": ..., "message": ..., "details": [...]}}`` with
400 (bad JSON, a field that fails its rule or is unknown, a refused action), 401 (no, unknown,
revoked token or disabled agent), 403, 404, 405, 409, 413 (body over :data:`MAX_BODY_BYTES`), 415
(a body that is not ``application/json``), 429 (too many failed tokens from one address: the
login's per-address limit and window, counted in the shared hot state). Must not decide access
itself, nor send anything to a customer except through :func:`helpline.inbox.send_reply`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import models_json_schema
from sqlalchemy import select

from config.settings import Settings
from helpline import __version__
from helpline.clients import client_address
from helpline.inbox import resolve_ticket, send_reply
from helpline.runtime import Runtime
from state import api_tokens, inbox
from state import agents as accounts
from state.agents import MAX_EMAIL_CHARS
from state.api_tokens import TokenLogin
from state.models import Agent, Ticket

log = logging.getLogger(__name__)

PREFIX = "/agent/api"
MAX_BODY_BYTES = 64 * 1024
"""A reply of 4,000 characters is at most 24 KiB as JSON (``\\uXXXX`` escapes); nothing needs more."""
MAX_QUEUE_LIMIT = 200
ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "too_large", 415: "unsupported_media_type", 429: "rate_limited", 500: "internal",
}
Priority = Literal["urgent", "high", "normal", "low"]
assert set(Priority.__args__) == set(inbox.PRIORITIES)


class ApiError(Exception):
    """An answer other than success; rendered as the JSON error body by :func:`json_errors`."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or ERROR_CODES.get(status, "error")
        self.details = details


# --- request models -------------------------------------------------------------------------------


class Body(BaseModel):
    """A request body: JSON, strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class EmptyBody(Body):
    """No fields: send ``{}`` or no body at all."""


class TextBody(Body):
    text: str = Field(min_length=1, max_length=inbox.MAX_AGENT_TEXT,
                      description="Plain text, at most 4,000 characters; leading and trailing blanks are dropped.")


class TransferBody(Body):
    """Exactly one of ``agent_id`` and ``agent_email``: the active agent to give the ticket to."""

    agent_id: int | None = Field(None, ge=1, le=2**62)
    agent_email: str | None = Field(None, min_length=3, max_length=MAX_EMAIL_CHARS)

    @model_validator(mode="after")
    def _one_target(self) -> TransferBody:
        if (self.agent_id is None) == (self.agent_email is None):
            raise ValueError("give exactly one of agent_id and agent_email")
        return self


class PriorityBody(Body):
    priority: Priority


class QueueQuery(BaseModel):
    """Query parameters of ``GET /agent/api/tickets`` (text in the URL, so not strict)."""

    model_config = ConfigDict(extra="forbid")

    view: Literal["all", "mine", "unassigned"] = Field(
        "all", description="all handed-off tickets, mine (assigned to you) or unassigned")
    channel: str | None = Field(None, min_length=1, max_length=32, description="only this channel, e.g. webchat")
    priority: Priority | None = Field(None, description="only this priority")
    language: str | None = Field(None, min_length=2, max_length=8, pattern=r"^[a-z]{2,3}$",
                                 description="only customers writing in this language (ISO 639-1, e.g. de)")
    limit: int = Field(50, ge=1, le=MAX_QUEUE_LIMIT, description="at most this many tickets")


# --- response models ------------------------------------------------------------------------------


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldError(Out):
    field: str = Field(description="where: a field name, dotted for nested ones; empty for the whole body")
    message: str


class ErrorInfo(Out):
    code: str = Field(description="stable, for programs: " + ", ".join(sorted(set(ERROR_CODES.values()))))
    message: str = Field(description="for people")
    details: list[FieldError] | None = None


class ErrorResponse(Out):
    error: ErrorInfo


class TokenRef(Out):
    id: str = Field(description="the token's id: the first 12 hex characters of its SHA-256")
    label: str | None


class Me(Out):
    id: int
    email: str
    name: str | None
    role: Literal["agent", "admin"]
    token: TokenRef


class AgentRef(Out):
    id: int
    name: str = Field(description="display name, or the email")


class QueueEntry(Out):
    id: int
    channel: str
    state: Literal["escalated", "human"]
    priority: Priority
    reason: str | None = Field(description="why the bot handed off (escalation reason)")
    intent: str | None
    assignee: AgentRef | None
    customer: str = Field(description="name, email or 'customer N'")
    preview: str = Field(description="the customer's last message, cut to 140 characters")
    waiting_since: datetime = Field(description="when the ticket last changed hands (UTC)")
    sla_due_at: datetime | None = Field(None, description="the earliest due time of the ticket's running SLA "
                                        "targets (UTC); null while none runs (e.g. waiting on the customer)")
    sla_breached: bool = Field(False, description="an SLA target of this ticket was missed")
    language: str | None = Field(None, description="the customer's language (ISO 639-1), as the brief found it")


class QueuePage(Out):
    tickets: list[QueueEntry] = Field(description="soonest SLA due time first, then most urgent priority, "
                                      "then longest waiting")


class Identity(Out):
    channel: str
    address: str


class EarlierTicket(Out):
    id: int
    state: str
    created_at: datetime


class CustomerOut(Out):
    id: int
    name: str | None
    email: str | None
    identities: list[Identity]
    earlier_tickets: list[EarlierTicket] = Field(description="the customer's other tickets, newest first (20 at most)")


class TranscriptMessage(Out):
    id: int
    author: str = Field(description="customer, bot, agent or system")
    channel: str
    direction: Literal["inbound", "outbound"]
    text: str = Field(description="as the customer wrote it: escape it wherever you show it")
    created_at: datetime
    tier: str | None = Field(description="bot replies only: the tier that answered")
    intent: str | None = Field(description="bot replies only")
    confidence: float | None = Field(description="bot replies only")
    agent: str | None = Field(description="agent replies only: who wrote it")


class TimelineEvent(Out):
    kind: str
    created_at: datetime
    summary: str
    note: str | None = Field(description="the text of an internal note")


class TicketDetail(Out):
    id: int
    state: str
    channel: str
    priority: Priority
    reason: str | None
    intent: str | None
    summary: str | None = Field(description="the plain-text handoff summary")
    brief: dict[str, Any] | None = Field(
        description="the structured handoff brief when the ticket has one (its 'version' names its schema)")
    verified_owner: str | None = Field(description="the order-store user the customer proved to be")
    assignee: AgentRef | None
    customer: CustomerOut
    created_at: datetime | None
    transcript: list[TranscriptMessage] = Field(description="the last 500 messages, oldest first")
    timeline: list[TimelineEvent] = Field(description="the last 500 events, oldest first")


class TicketStatus(Out):
    id: int
    state: str
    priority: Priority
    assignee: AgentRef | None


class ActionResult(Out):
    ticket: TicketStatus = Field(description="the ticket after the action")


class SentMessage(Out):
    id: int
    channel: str = Field(description="the channel of the customer's latest message, where it was sent")
    created_at: datetime
    delivered: bool = Field(description="the first attempt delivered it; when false the outbox retries")


class ReplyResult(Out):
    ticket: TicketStatus
    message: SentMessage


# --- the route table ------------------------------------------------------------------------------


AUTH_ERRORS = (401, 429)
BODY_ERRORS = (400, 413, 415)


@dataclass(frozen=True)
class Endpoint:
    """One route: ``path`` in OpenAPI template syntax; ``handler`` a method of :class:`ApiRoutes`."""

    method: str
    path: str
    operation_id: str
    summary: str
    handler: str
    response: type[Out] | None
    body: type[Body] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = AUTH_ERRORS
    public: bool = False
    description: str = ""


def _action(name: str, verb: str, summary: str, body: type[Body] = EmptyBody,
            response: type[Out] = ActionResult, errors: tuple[int, ...] = (403, 404, 409),
            description: str = "") -> Endpoint:
    return Endpoint(
        "POST", f"{PREFIX}/tickets/{{ticket_id}}/{name}", verb, summary, verb, response, body=body,
        errors=(*AUTH_ERRORS, *BODY_ERRORS, *errors), description=description,
    )


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", f"{PREFIX}/openapi.json", "openapi", "This document (no token needed)", "openapi", None,
             errors=(), public=True),
    Endpoint("GET", f"{PREFIX}/me", "me", "The agent the token acts as", "me", Me),
    Endpoint("GET", f"{PREFIX}/tickets", "list_tickets", "The queue: handed-off tickets (escalated and human)",
             "list_tickets", QueuePage, query=QueueQuery, errors=(*AUTH_ERRORS, 400)),
    Endpoint("GET", f"{PREFIX}/tickets/{{ticket_id}}", "get_ticket",
             "One ticket: customer, handoff summary and brief, transcript, timeline", "get_ticket", TicketDetail,
             errors=(*AUTH_ERRORS, 404)),
    _action("claim", "claim", "Take an unassigned handed-off ticket (of two claims at once exactly one wins)",
            errors=(404, 409)),
    _action("reply", "reply", "Send a reply to the customer on their channel (needs ownership)",
            body=TextBody, response=ReplyResult,
            description="Stored as an agent message, queued in the outbox and sent at once; retried when the "
                        "channel fails. A reply on an unclaimed (escalated) ticket by an admin takes it to human."),
    _action("note", "note", "Add an internal note (never sent to the customer)", body=TextBody, errors=(404,)),
    _action("transfer", "transfer", "Give an owned ticket to another active agent", body=TransferBody),
    _action("priority", "set_priority", "Set the priority of an owned ticket", body=PriorityBody),
    _action("resolve", "resolve", "Resolve an owned ticket"),
    _action("reopen", "reopen", "Reopen a resolved ticket (you own it afterwards)"),
    _action("hand-back", "hand_back", "Hand an owned ticket back to the bot",
            description="The bot answers the customer's next message; no second handoff message is sent. "
                        "Afterwards the ticket may no longer be readable by a non-admin agent (it left the queue)."),
)


# --- the OpenAPI document -------------------------------------------------------------------------


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _ERROR_TEXT[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


_ERROR_TEXT = {
    400: "invalid JSON, a field that breaks its rule or is unknown, or an action refused for its input",
    401: "no token, or an unknown or revoked one, or its agent is disabled",
    403: "you may read the ticket but not do this (claim it first; another agent owns it)",
    404: "no such ticket, or not one you may read",
    409: "the ticket is not in a state for this (claimed by someone else, resolved, ...)",
    413: f"the body is over {MAX_BODY_BYTES} bytes",
    415: "a body that is not application/json (UTF-8)",
    429: "too many requests with a wrong token from your address; wait for the window to pass",
}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`ENDPOINTS`, schemas from the pydantic models (request
    bodies as validated, responses as serialised)."""
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [(ErrorResponse, "serialization")]
    for e in ENDPOINTS:
        if e.body is not None:
            models.append((e.body, "validation"))
        if e.response is not None:
            models.append((e.response, "serialization"))
    refs, defs = models_json_schema(list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        op: dict[str, Any] = {"operationId": e.operation_id, "summary": e.summary, "responses": {}}
        if e.description:
            op["description"] = e.description
        if e.public:
            op["security"] = []
        parameters = []
        if "{ticket_id}" in e.path:
            parameters.append({"name": "ticket_id", "in": "path", "required": True,
                               "schema": {"type": "integer", "minimum": 1}})
        if e.query is not None:
            query_schema = e.query.model_json_schema()
            for name, prop in query_schema["properties"].items():
                parameters.append({"name": name, "in": "query", "required": name in query_schema.get("required", ()),
                                   "description": prop.get("description", ""), "schema": prop})
        if parameters:
            op["parameters"] = parameters
        if e.body is not None:
            op["requestBody"] = {
                "required": e.body is not EmptyBody,
                "content": {"application/json": {"schema": refs[(e.body, "validation")]}},
            }
        ok = {"type": "object"} if e.response is None else refs[(e.response, "serialization")]
        op["responses"]["200"] = {"description": "done", "content": {"application/json": {"schema": ok}}}
        for status in e.errors:
            op["responses"][str(status)] = _error_response(status)
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Helpline agent inbox API",
            "version": __version__,
            "description": "Work the Helpline agent inbox from scripts and other help desks. Authenticate with "
                           "`Authorization: Bearer <token>` (`helpline agents token EMAIL`); no cookies, so no "
                           "CSRF token. Errors are `{\"error\": {\"code\", \"message\", \"details\"}}`.",
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "an API token, hlp_..."}},
        },
    }


# --- errors as JSON -------------------------------------------------------------------------------


def error_response(status: int, code: str, message: str, details: list[dict[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = ErrorResponse(error=ErrorInfo(code=code, message=message,
                                         details=[FieldError(**d) for d in details] if details else None))
    response = web.json_response(body.model_dump(mode="json", exclude_none=True), status=status, headers=headers)
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Under ``/agent/api/`` every error is the JSON error body: ours, and aiohttp's own (an unknown
    path or a malformed id: 404; a wrong method: 405); an unexpected failure is logged and is 500."""
    if not request.path.startswith(PREFIX + "/"):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        headers = {hdrs.WWW_AUTHENTICATE: 'Bearer realm="helpline"'} if exc.status == 401 else None
        return error_response(exc.status, exc.code, str(exc), exc.details, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {hdrs.ALLOW: exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else None
        message = {404: "no such route", 405: f"method {request.method} not allowed here"}.get(exc.status, exc.reason)
        return error_response(exc.status, ERROR_CODES.get(exc.status, "error"), message, headers=headers)
    except Exception:
        log.exception("agent API: %s %s failed", request.method, request.path)
        return error_response(500, "internal", "internal error; the server log has the details")


def _details(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()[:20]]


async def read_body(request: web.Request, model: type[Body]) -> Body:
    """The request body as ``model``: at most :data:`MAX_BODY_BYTES` (413), ``application/json``
    in UTF-8 (415), valid JSON matching the model (400). No body at all is ``{}`` for
    :class:`EmptyBody`."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"the body has {request.content_length} bytes; at most {MAX_BODY_BYTES}")
    if not request.body_exists:
        if model is EmptyBody:
            return EmptyBody()
        raise ApiError(400, "this request needs a JSON body", code="invalid_body")
    charset = (request.charset or "utf-8").lower()
    if request.content_type != "application/json" or charset not in ("utf-8", "utf8"):
        raise ApiError(415, f"send the body as application/json in UTF-8, not {request.headers.get(hdrs.CONTENT_TYPE)!r}")
    raw = bytearray()
    while True:  # chunked bodies carry no length: stop reading past the limit
        chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    if not raw.strip() and model is EmptyBody:
        return EmptyBody()
    duplicate = _duplicate_key(bytes(raw))
    if duplicate is not None:
        # JSON parsers disagree on repeated keys (first or last wins): a proxy that checked the
        # first must not see another request than the one stored. RFC 8259 section 4.
        raise ApiError(400, f"the key {duplicate!r} appears twice in one object", code="invalid_json")
    try:
        return model.model_validate_json(bytes(raw))
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise ApiError(400, "the body is not valid JSON", code="invalid_json", details=_details(exc)) from None
        raise ApiError(400, "the body does not match this request's schema", code="invalid_body",
                       details=_details(exc)) from None


# --- the routes -----------------------------------------------------------------------------------

Handler = Callable[..., Awaitable[Any]]


class ApiRoutes:
    """The ``/agent/api/`` routes of one application; ``runtime`` is read when a request comes."""

    def __init__(self, settings: Settings, runtime: Callable[[], Runtime], proxies: tuple[Any, ...]) -> None:
        self.settings = settings
        self._runtime = runtime
        self.proxies = proxies

    @property
    def rt(self) -> Runtime:
        return self._runtime()

    def add_to(self, app: web.Application) -> None:
        """Register every endpoint of :data:`ENDPOINTS` and the JSON-errors middleware."""
        app.middlewares.append(json_errors)
        for e in ENDPOINTS:
            path = e.path.replace("{ticket_id}", "{ticket_id:\\d{1,18}}")
            app.router.add_route(e.method, path, self._endpoint(e))

    def _endpoint(self, e: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        handler: Handler = getattr(self, e.handler)

        async def handle(request: web.Request) -> web.StreamResponse:
            if e.public:
                result = await handler()
            else:
                login = await self._authenticate(request)
                args: list[Any] = [login]
                if "ticket_id" in request.match_info:
                    args.append(int(request.match_info["ticket_id"]))
                if e.query is not None:
                    args.append(_query(request, e.query))
                if e.method == "POST":
                    args.append(await read_body(request, e.body or EmptyBody))
                try:
                    result = await handler(*args)
                except inbox.InboxError as exc:
                    raise ApiError(exc.status, str(exc)) from None
                if e.method == "POST":
                    log.info("agent %s (API token %s): %s on ticket %s", login.agent.id, login.token_id,
                             e.operation_id, args[1])
                    await self.rt.inbox_feed.notify()  # committed: every live queue re-reads at once
            payload = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
            response = web.json_response(payload)
            response.headers[hdrs.CACHE_CONTROL] = "no-store"
            return response

        return handle

    async def _authenticate(self, request: web.Request) -> TokenLogin:
        """The token's agent; 401 without a valid one, 429 once this address has sent too many
        wrong tokens in the window (checked first, so a flood costs no database query)."""
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "send Authorization: Bearer <token> (helpline agents token EMAIL)")
        limiter = self.rt.hot.limiter
        key = f"api-token-failures:{client_address(request, self.proxies)}"
        limit = self.settings.login_attempts_per_address
        if await limiter.count(key) >= limit:
            raise ApiError(429, "too many wrong tokens from your address; try again later")
        login = await api_tokens.authenticate(self.rt.db, token.strip())
        if login is None:
            await limiter.hit(key, limit, self.settings.login_window_s)
            log.info("agent API: refused a token from %s", client_address(request, self.proxies))
            raise ApiError(401, "unknown or revoked token, or its agent is disabled")
        return login

    async def _status(self, ticket_id: int) -> TicketStatus:
        """The ticket as the action left it (read directly: after a hand-back an agent may no
        longer read the ticket's full view, but the caller just acted on it)."""
        async with self.rt.db.sessions() as session:
            row = (await session.execute(
                select(Ticket, Agent).outerjoin(Agent, Agent.id == Ticket.assignee_id).where(Ticket.id == ticket_id)
            )).one()
        ticket, assignee = row
        return TicketStatus(id=ticket.id, state=ticket.state, priority=ticket.priority,
                            assignee=_agent_ref(assignee.id, assignee.display_name or assignee.email)
                            if assignee is not None else None)

    # --- handlers: (login, [ticket_id], [query or body]) -> model --------------------------------

    async def openapi(self) -> dict[str, Any]:
        return openapi_document()

    async def me(self, login: TokenLogin) -> Me:
        a = login.agent
        return Me(id=a.id, email=a.email, name=a.display_name, role=a.role,
                  token=TokenRef(id=login.token_id, label=login.label))

    async def list_tickets(self, login: TokenLogin, query: QueueQuery) -> QueuePage:
        items = await inbox.queue(self.rt.db, login.agent, view=query.view, channel=query.channel,
                                  priority=query.priority, language=query.language, limit=query.limit)
        return QueuePage(tickets=[
            QueueEntry(id=i.ticket_id, channel=i.channel, state=i.state, priority=i.priority,
                       reason=i.reason, intent=i.intent, assignee=_agent_ref(i.assignee_id, i.assignee),
                       customer=i.customer, preview=i.preview, waiting_since=i.waiting_since,
                       sla_due_at=i.sla_due_at, sla_breached=i.sla_breached_at is not None, language=i.language)
            for i in items
        ])

    async def get_ticket(self, login: TokenLogin, ticket_id: int) -> TicketDetail:
        v = await inbox.ticket_view(self.rt.db, ticket_id, login.agent)
        async with self.rt.db.sessions() as session:
            brief = await session.scalar(select(Ticket.brief).where(Ticket.id == ticket_id))
        return TicketDetail(
            id=v.ticket_id, state=v.state, channel=v.channel, priority=v.priority,
            reason=v.reason, intent=v.intent, summary=v.summary, brief=brief, verified_owner=v.verified_owner,
            assignee=_agent_ref(v.assignee_id, v.assignee), created_at=v.created_at,
            customer=CustomerOut(
                id=v.customer_id, name=v.customer_name, email=v.customer_email,
                identities=[Identity(channel=c, address=a) for c, a in v.identities],
                earlier_tickets=[EarlierTicket(id=i, state=s, created_at=t) for i, s, t in v.earlier_tickets],
            ),
            transcript=[TranscriptMessage(
                id=m.id, author=m.author, channel=m.channel, direction=m.direction,
                text=m.text, created_at=m.created_at, tier=m.tier, intent=m.intent, confidence=m.confidence,
                agent=m.agent,
            ) for m in v.transcript],
            timeline=[TimelineEvent(kind=t.kind, created_at=t.created_at, summary=t.summary, note=t.note)
                      for t in v.timeline],
        )

    async def claim(self, login: TokenLogin, ticket_id: int, body: Body) -> ActionResult:
        await inbox.claim(self.rt.db, ticket_id, login.agent)
        return ActionResult(ticket=await self._status(ticket_id))

    async def reply(self, login: TokenLogin, ticket_id: int, body: Body) -> ReplyResult:
        assert isinstance(body, TextBody)
        message, delivered = await send_reply(self.rt, ticket_id, login.agent, body.text)
        return ReplyResult(
            ticket=await self._status(ticket_id),
            message=SentMessage(id=message.id, channel=message.channel, created_at=message.created_at,
                                delivered=delivered),
        )

    async def note(self, login: TokenLogin, ticket_id: int, body: Body) -> ActionResult:
        assert isinstance(body, TextBody)
        await inbox.note(self.rt.db, ticket_id, login.agent, body.text)
        return ActionResult(ticket=await self._status(ticket_id))

    async def transfer(self, login: TokenLogin, ticket_id: int, body: Body) -> ActionResult:
        assert isinstance(body, TransferBody)
        target = body.agent_id
        if body.agent_email is not None:
            try:
                email = accounts.normalise_email(body.agent_email)
            except accounts.AgentError as exc:
                raise inbox.InboxError(str(exc)) from None
            found = [a for a in await accounts.list_agents(self.rt.db) if a.email == email and not a.disabled]
            if not found:
                raise inbox.InboxError("no active agent with that email")
            target = found[0].id
        assert target is not None
        await inbox.transfer(self.rt.db, ticket_id, login.agent, target)
        return ActionResult(ticket=await self._status(ticket_id))

    async def set_priority(self, login: TokenLogin, ticket_id: int, body: Body) -> ActionResult:
        assert isinstance(body, PriorityBody)
        await inbox.set_priority(self.rt.db, ticket_id, login.agent, body.priority, sla=self.rt.sla.config)
        return ActionResult(ticket=await self._status(ticket_id))

    async def resolve(self, login: TokenLogin, ticket_id: int, body: Body) -> ActionResult:
        await resolve_ticket(self.rt, ticket_id, login.agent)
        return ActionResult(ticket=await self._status(ticket_id))

    async def reopen(self, login: TokenLogin, ticket_id: int, body: Body) -> ActionResult:
        await inbox.reopen(self.rt.db, ticket_id, login.agent, sla=self.rt.sla.config)
        return ActionResult(ticket=await self._status(ticket_id))

    async def hand_back(self, login: TokenLogin, ticket_id: int, body: Body) -> ActionResult:
        await inbox.hand_back(self.rt.db, ticket_id, login.agent)
        return ActionResult(ticket=await self._status(ticket_id))


class _Repeated(ValueError):
    pass


def _duplicate_key(raw: bytes) -> str | None:
    """The first key repeated within one JSON object of ``raw``, or None (also for invalid JSON:
    the schema check reports that)."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise _Repeated(key)
            seen[key] = value
        return seen

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except _Repeated as exc:
        return str(exc)
    except (ValueError, RecursionError):
        return None
    return None


def _agent_ref(agent_id: int | None, name: str | None) -> AgentRef | None:
    return AgentRef(id=agent_id, name=name or str(agent_id)) if agent_id is not None else None


def _query(request: web.Request, model: type[BaseModel]) -> Any:
    """The query string as ``model``: 400 for an unknown, repeated or invalid parameter."""
    if len(request.query) != len(set(request.query)):
        raise ApiError(400, "a query parameter is given twice", code="invalid_query")
    try:
        return model.model_validate(dict(request.query.items()))
    except ValidationError as exc:
        raise ApiError(400, "invalid query parameters", code="invalid_query", details=_details(exc)) from None
