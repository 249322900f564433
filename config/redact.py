"""The effective settings as an operator may see them: every secret masked.

Used by the inbox's read-only settings page (``/agent/admin/settings``). What is masked, whatever
settings are added later:

- every ``SecretStr``/``SecretBytes`` value, and every value of a setting whose name has a word
  ``secret``, ``password``, ``passwd``, ``token``, ``key``, ``credentials`` or ``auth`` (so a new
  ``llm_api_key`` typed as a plain string stays hidden too): shown as "set (hidden)";
- in every URL (database, Redis, webhook, any string with ``://``): the password of its user part
  (the whole user part when it has no password: it may be a token), its query string and fragment
  (drivers and receivers take passwords and tokens there too), and the path of an http(s) URL (a
  webhook's path is often its secret). A string that looks like a URL but cannot be parsed is
  hidden whole.

Must not read the environment or import anything of the web layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import AnyUrl, BaseModel, SecretBytes, SecretStr

HIDDEN = "set (hidden)"
NOT_SET = "not set"
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
"""A value that is a URL as a whole (a reply text that merely contains one is shown as it is)."""
SECRET_WORDS = frozenset({"secret", "password", "passwd", "token", "key", "credentials", "auth"})


@dataclass(frozen=True)
class ShownSetting:
    """One setting: its field ``name``, its environment variable and its value as text, masked."""

    name: str
    env: str
    value: str


def redacted_settings(settings: BaseModel, env_prefix: str = "HELPLINE_") -> list[ShownSetting]:
    """Every field of ``settings`` in declaration order, its value made safe to show (see the
    module docstring). The environment variable is ``env_prefix`` + the upper-case name, or the
    field's validation alias when it has one (``AGENT_MODE``)."""
    shown = []
    for name, field in type(settings).model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        value = getattr(settings, name)
        text = HIDDEN if value is not None and _secret_name(name) else show(value)
        shown.append(ShownSetting(name, alias or f"{env_prefix}{name.upper()}", text))
    return shown


def show(value: Any) -> str:
    """``value`` as text with secrets masked: None -> "not set", secrets -> "set (hidden)", URLs
    masked by :func:`mask_url`, lists joined with ", "."""
    if value is None:
        return NOT_SET
    if isinstance(value, (SecretStr, SecretBytes)):
        return HIDDEN
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(show(v) for v in value) if value else "(none)"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, AnyUrl) or (isinstance(value, str) and URL.fullmatch(value)):
        return mask_url(str(value))
    return str(value)


def mask_url(url: str) -> str:
    """``url`` with the password in its user part (or a user part without one) replaced by
    ``***``, any query string and fragment by ``?***``/``#***``, and an http(s) path by ``/***``;
    "set (hidden)" when it cannot be parsed."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return HIDDEN
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        # A user part without a password may be a token itself (https://TOKEN@host): hide it.
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    else:
        netloc = parts.netloc
    path = parts.path
    if parts.scheme.lower() in ("http", "https") and path not in ("", "/"):
        path = "/***"  # a webhook's path is often its secret (https://hooks.example/T0/B0/SECRET)
    # Put back by hand: urlunsplit drops the empty authority of sqlite:////abs/path.
    return f"{parts.scheme}://{netloc}{path}{'?***' if parts.query else ''}{'#***' if parts.fragment else ''}"


def _secret_name(name: str) -> bool:
    return bool(SECRET_WORDS.intersection(name.lower().split("_")))
