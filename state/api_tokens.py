"""API tokens for the agent inbox's JSON API (``/agent/api``): issue, authenticate, list, revoke.

A token is ``hlp_`` plus 43 URL-safe characters (256 random bits, :func:`secrets.token_urlsafe`),
shown once when it is made (``helpline agents token EMAIL``). The database keeps only its SHA-256
(``agent_api_tokens.token_sha256``), so a copy of the database authenticates nobody. A token acts as
its agent, with that agent's role, until it is revoked or the agent is disabled. A token's **id** is
the first 12 hex characters of that SHA-256: safe to show, log and paste into ``revoke-token``.

No expiry: a token for a script lives until it is revoked (``helpline agents revoke-token ID``).

Errors: :class:`state.agents.AgentError` (a ``ValueError``) for an unknown or disabled agent, a
label that is too long, or a token id that matches no token or several; the message says which.
Must not import aiohttp or anything of the web layer.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from state.agents import AgentError, AgentView, normalise_email
from state.db import Database
from state.models import Agent, AgentApiToken, utcnow

PREFIX = "hlp_"
"""Every token starts with this, so secret scanners and people can tell what a leaked string is."""
MAX_TOKEN_CHARS = 128
MAX_LABEL_CHARS = 200
ID_CHARS = 12
"""Hex characters of the SHA-256 shown as a token's id."""
MIN_REF_CHARS = 8
"""The shortest id prefix ``revoke`` accepts."""
LAST_USED_EVERY = timedelta(seconds=60)
"""``last_used_at`` is written at most this often per token, so API reads cost no write each."""


@dataclass(frozen=True)
class TokenInfo:
    """A token as the CLI lists it (never the secret). Times are UTC."""

    id: str
    agent_id: int
    agent_email: str
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class TokenLogin:
    """A caller authenticated by a token: the agent it acts as and the token's id and label."""

    agent: AgentView
    token_id: str
    label: str | None


def digest(token: str) -> str:
    """The SHA-256 hex digest stored for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _info(row: AgentApiToken, email: str) -> TokenInfo:
    return TokenInfo(row.token_sha256[:ID_CHARS], row.agent_id, email, row.label, row.created_at,
                     row.last_used_at, row.revoked_at)


def _label(label: str | None) -> str | None:
    if label is None:
        return None
    label = " ".join(label.split())  # no newlines or tabs in the CLI's tab-separated list
    if len(label) > MAX_LABEL_CHARS:
        raise AgentError(f"a label has at most {MAX_LABEL_CHARS} characters, got {len(label)}")
    return label or None


async def issue(db: Database, email: str, *, label: str | None = None) -> tuple[str, TokenInfo]:
    """A new token for the active agent with ``email``: ``(secret, info)``. The secret is returned
    only here. Raises :class:`AgentError` for an unknown or disabled agent or a label over 200
    characters."""
    email = normalise_email(email)
    label = _label(label)
    token = PREFIX + secrets.token_urlsafe(32)
    async with db.write() as session:
        agent = await session.scalar(select(Agent).where(Agent.email == email))
        if agent is None:
            raise AgentError(f"no agent with email {email}")
        if agent.disabled_at is not None:
            raise AgentError(f"agent {email} is disabled: enable it first (helpline agents disable --enable)")
        row = AgentApiToken(token_sha256=digest(token), agent_id=agent.id, label=label, created_at=utcnow())
        session.add(row)
        await session.flush()
        return token, _info(row, agent.email)


async def authenticate(db: Database, token: str, *, now: datetime | None = None) -> TokenLogin | None:
    """The agent ``token`` acts as; None when it is malformed, unknown, revoked, or its agent is
    disabled. Records the use (``last_used_at``) at most once a minute."""
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS:
        return None  # not one of ours: no database round trip
    now = now or utcnow()
    key = digest(token)
    async with db.sessions() as session:
        row = (await session.execute(
            select(AgentApiToken, Agent).join(Agent, Agent.id == AgentApiToken.agent_id)
            .where(AgentApiToken.token_sha256 == key)
        )).first()
    if row is None:
        return None
    found, agent = row
    if found.revoked_at is not None or agent.disabled_at is not None:
        return None
    if found.last_used_at is None or now - found.last_used_at >= LAST_USED_EVERY:
        async with db.write() as session:
            await session.execute(
                update(AgentApiToken).where(AgentApiToken.token_sha256 == key).values(last_used_at=now)
            )
    view = AgentView(agent.id, agent.email, agent.display_name, agent.role, disabled=False)
    return TokenLogin(view, key[:ID_CHARS], found.label)


async def list_tokens(db: Database, email: str) -> list[TokenInfo]:
    """Every token of the agent with ``email`` (revoked ones too), oldest first. Raises
    :class:`AgentError` for an unknown email."""
    email = normalise_email(email)
    async with db.sessions() as session:
        agent = await session.scalar(select(Agent).where(Agent.email == email))
        if agent is None:
            raise AgentError(f"no agent with email {email}")
        rows = await session.scalars(
            select(AgentApiToken).where(AgentApiToken.agent_id == agent.id)
            .order_by(AgentApiToken.created_at, AgentApiToken.token_sha256)
        )
        return [_info(r, agent.email) for r in rows]


async def revoke(db: Database, ref: str) -> TokenInfo:
    """Revoke the token that ``ref`` names: its id (or any unique prefix of at least 8 hex
    characters of its SHA-256) or the whole secret (``hlp_...``). It stops working at once.
    Revoking a revoked token changes nothing. Raises :class:`AgentError` when ``ref`` matches no
    token or several."""
    ref = ref.strip()
    if ref.startswith(PREFIX):
        condition = AgentApiToken.token_sha256 == digest(ref)
    else:
        ref = ref.lower()
        if len(ref) < MIN_REF_CHARS or len(ref) > 64 or any(c not in "0123456789abcdef" for c in ref):
            raise AgentError(
                f"a token id is {MIN_REF_CHARS} to 64 hex characters (see helpline agents tokens EMAIL), "
                f"or give the whole token (hlp_...); got {ref[:80]!r}"
            )
        condition = AgentApiToken.token_sha256.startswith(ref, autoescape=True)
    async with db.write() as session:
        rows = (await session.execute(
            select(AgentApiToken, Agent.email).join(Agent, Agent.id == AgentApiToken.agent_id).where(condition).limit(2)
        )).all()
        if not rows:
            raise AgentError(f"no API token {ref[:ID_CHARS]}")
        if len(rows) > 1:
            raise AgentError(f"{ref} matches several tokens: give more characters of the id")
        row, email = rows[0]
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return _info(row, email)
