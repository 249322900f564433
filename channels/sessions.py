"""Web-chat session ids, issued and signed by the server.

A session id is the customer's identity on web chat (a bearer token), so a client must never choose
one: an id the server did not issue is refused, and a weak or guessed id cannot name anyone. An id
is ``KIND + 24 random URL-safe characters``, a ``.`` and an HMAC-SHA256 signature over it
(itsdangerous ``Signer``, base64url), about 70 characters. ``KIND`` says which channel the session
belongs to: ``w`` web chat, ``r`` replayed traffic (``helpline replay``; kept out of the queue and
reports). The key is ``HELPLINE_SECRET_KEY`` or one created once per deployment and kept in the
database (:func:`state.flags.session_secret`).

Ids from releases before signing (server-made, 32 characters) stay valid only while their customer
exists; :meth:`SessionIssuer.channel_of` leaves that lookup to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from itsdangerous import BadSignature, Signer

WEBCHAT = "webchat"
REPLAY = "replay"
_KIND = {WEBCHAT: "w", REPLAY: "r"}
_CHANNEL = {v: k for k, v in _KIND.items()}
LEGACY_MIN_LENGTH = 32
"""Unsigned ids issued before this release were ``secrets.token_urlsafe(24)``: 32 characters."""


class SessionIssuer:
    """Issues and checks session ids with one key (``secret``: any string, at least 16 characters)."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("the session signing key must be at least 16 characters")
        self._signer = Signer(secret, salt="helpline.webchat.session", digest_method=hashlib.sha256)

    def issue(self, channel: str = WEBCHAT) -> str:
        """A new session id for ``channel`` (``webchat`` or ``replay``)."""
        return self._signer.sign(_KIND[channel] + secrets.token_urlsafe(18)).decode("ascii")

    def channel_of(self, session_id: str) -> str | None:
        """The channel of a session id this server issued, or None when the signature does not
        verify (forged, edited, another deployment's, or an unsigned id from an older release)."""
        try:
            value = self._signer.unsign(session_id).decode("ascii")
        except (BadSignature, UnicodeError, ValueError):
            return None
        # base64url leaves unused bits in the signature's last character, and the decoder accepts
        # each of their spellings: only the one this server wrote names the session (otherwise
        # one issued id became four customers, and the new-session limit four times as loose).
        if not hmac.compare_digest(self._signer.sign(value).decode("ascii"), session_id):
            return None
        return _CHANNEL.get(value[:1])
