"""Agent accounts and their login sessions.

Passwords are hashed with argon2id (``argon2-cffi``'s :class:`~argon2.PasswordHasher`, RFC 9106
parameters as the library sets them), and re-hashed at login when those parameters change. A login
session is a random 256-bit token held by the browser in a cookie; the database keeps only its
SHA-256, the session's CSRF token, when it was last used (idle expiry) and its absolute expiry.

Errors: :class:`AgentError` (a ``ValueError``) for a bad email, role or password, a duplicate email or
an unknown agent; the message says which. Must not import aiohttp or anything of the web layer.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from state.db import Database
from state.models import Agent, AgentSession, utcnow

ROLES = ("agent", "admin")
"""``agent`` works tickets; ``admin`` also manages agents and the kill switch."""
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024  # argon2 is linear in its input, but nobody needs more
MAX_EMAIL_CHARS = 320  # RFC 5321: 64 + 1 + 255

_hasher = PasswordHasher()
# Verified when the email is unknown, so a wrong email costs as long as a wrong password and the
# timing does not say which agents exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AgentError(ValueError):
    """A refused agent operation; the message names the field and the rule."""


@dataclass(frozen=True)
class AgentView:
    """An agent as the inbox and the CLI see it (never the password hash)."""

    id: int
    email: str
    display_name: str | None
    role: str
    disabled: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def label(self) -> str:
        return self.display_name or self.email


@dataclass(frozen=True)
class LoginSession:
    """A live login: the agent and the CSRF token every state-changing request must carry."""

    agent: AgentView
    csrf_token: str


def _view(agent: Agent) -> AgentView:
    return AgentView(agent.id, agent.email, agent.display_name, agent.role, agent.disabled_at is not None)


def normalise_email(email: str) -> str:
    """``email`` trimmed and lower-cased; :class:`AgentError` unless it looks like ``local@domain``."""
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or len(email) > MAX_EMAIL_CHARS or any(c.isspace() for c in email):
        raise AgentError(f"not an email address: {email[:80]!r}")
    return email


def check_password(password: str) -> str:
    """``password`` if it has 12 to 1,024 characters; else :class:`AgentError`."""
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AgentError(
            f"a password needs {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters, got {len(password)}"
        )
    return password


async def add_agent(
    db: Database, email: str, password: str, *, role: str = "agent", display_name: str | None = None
) -> AgentView:
    """Create an agent. Raises :class:`AgentError` for a bad email, role or password, or an email
    that already has an account."""
    if role not in ROLES:
        raise AgentError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    email = normalise_email(email)
    password_hash = await hash_password(password)
    try:
        async with db.write() as session:
            agent = Agent(email=email, display_name=display_name, password_hash=password_hash, role=role,
                          created_at=utcnow())
            session.add(agent)
            await session.flush()
            return _view(agent)
    except IntegrityError:
        raise AgentError(f"an agent with email {email} already exists") from None


async def list_agents(db: Database) -> list[AgentView]:
    """Every agent, oldest first."""
    async with db.sessions() as session:
        return [_view(a) for a in (await session.scalars(select(Agent).order_by(Agent.id)))]


async def set_disabled(db: Database, email: str, disabled: bool = True) -> AgentView:
    """Disable (or enable again) the agent with ``email``; disabling ends its sessions at once.
    Raises :class:`AgentError` for an unknown email."""
    email = normalise_email(email)
    async with db.write() as session:
        agent = await session.scalar(select(Agent).where(Agent.email == email))
        if agent is None:
            raise AgentError(f"no agent with email {email}")
        agent.disabled_at = utcnow() if disabled else None
        if disabled:
            await session.execute(delete(AgentSession).where(AgentSession.agent_id == agent.id))
        return _view(agent)


async def set_password(db: Database, email: str, password: str) -> None:
    """Replace the agent's password and end its sessions. Raises :class:`AgentError`."""
    password_hash = await hash_password(password)
    email = normalise_email(email)
    async with db.write() as session:
        agent = await session.scalar(select(Agent).where(Agent.email == email))
        if agent is None:
            raise AgentError(f"no agent with email {email}")
        agent.password_hash = password_hash
        await session.execute(delete(AgentSession).where(AgentSession.agent_id == agent.id))


async def hash_password(password: str) -> str:
    """The argon2id hash (PHC string) of a checked password, computed in a worker thread (tens of
    milliseconds of CPU: never on the event loop). Raises :class:`AgentError` for a bad password."""
    return await asyncio.to_thread(_hasher.hash, check_password(password))


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches the argon2 ``password_hash`` (CPU-bound: tens of ms; call it
    off the event loop)."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def find_login(db: Database, email: str) -> tuple[int, str, bool] | None:
    """``(agent id, password hash, needs rehash)`` of an active agent with ``email``; None for an
    unknown, malformed or disabled one."""
    try:
        email = normalise_email(email)
    except AgentError:
        return None
    async with db.sessions() as session:
        agent = await session.scalar(select(Agent).where(Agent.email == email, Agent.disabled_at.is_(None)))
        if agent is None:
            return None
        return agent.id, agent.password_hash, _hasher.check_needs_rehash(agent.password_hash)


def dummy_verify(password: str) -> None:
    """Spend what a real verification costs (unknown email: same timing as a wrong password)."""
    verify_password(_DUMMY_HASH, password[:MAX_PASSWORD_CHARS])


async def rehash(db: Database, agent_id: int, password: str) -> None:
    """Store a fresh hash after the library's parameters changed (called after a good login)."""
    password_hash = await asyncio.to_thread(_hasher.hash, password)
    async with db.write() as session:
        await session.execute(update(Agent).where(Agent.id == agent_id).values(password_hash=password_hash))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def start_session(db: Database, agent_id: int, *, absolute_s: float, replaces: str | None = None) -> str:
    """A new login session for ``agent_id``; returns the token for the cookie. ``replaces``: the
    token the browser held before, ended here (the session id is rotated at every login)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    async with db.write() as session:
        if replaces:
            await session.execute(delete(AgentSession).where(AgentSession.token_sha256 == _digest(replaces)))
        session.add(AgentSession(
            token_sha256=_digest(token), agent_id=agent_id, csrf_token=secrets.token_urlsafe(32),
            created_at=now, seen_at=now, expires_at=now + timedelta(seconds=absolute_s),
        ))
    return token


async def end_session(db: Database, token: str) -> None:
    """Log out: the token stops working at once."""
    async with db.write() as session:
        await session.execute(delete(AgentSession).where(AgentSession.token_sha256 == _digest(token)))


async def resume_session(
    db: Database, token: str, *, idle_s: float, now: datetime | None = None
) -> LoginSession | None:
    """The live session for ``token``, its idle clock restarted; None (and the row removed) when it
    is unknown, idle for over ``idle_s`` seconds, past its absolute expiry, or its agent is disabled.
    ``seen_at`` is written at most once a minute, so reading pages costs no write per request."""
    if not token or len(token) > 128:
        return None
    now = now or utcnow()
    digest = _digest(token)
    async with db.sessions() as session:
        row = (await session.execute(
            select(AgentSession, Agent).join(Agent, Agent.id == AgentSession.agent_id)
            .where(AgentSession.token_sha256 == digest)
        )).first()
    if row is None:
        return None
    login, agent = row
    if (agent.disabled_at is not None or login.expires_at <= now
            or login.seen_at + timedelta(seconds=idle_s) <= now):
        await end_session(db, token)
        return None
    if now - login.seen_at >= timedelta(seconds=60):
        async with db.write() as session:
            await session.execute(
                update(AgentSession).where(AgentSession.token_sha256 == digest).values(seen_at=now)
            )
    return LoginSession(_view(agent), login.csrf_token)
