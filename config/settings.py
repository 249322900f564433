"""One typed settings object for the whole server.

Read once at start-up from environment variables (``HELPLINE_*`` plus ``AGENT_MODE``) and, optionally,
a YAML file named by ``HELPLINE_CONFIG_FILE``; environment variables win over the file. Every default is
the embedded one (SQLite under ``./var``, hot state in process, local models), so ``helpline serve``
runs with nothing configured. No other module reads the environment: settings are passed down.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, HttpUrl, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

CONFIG_DIR = Path(__file__).resolve().parent
"""Folder of the shipped configuration: ``intents.yaml``, ``kb/``, ``orders.json``."""

MIN_WEBHOOK_SECRET_CHARS = 32
"""Shortest handoff-webhook secret accepted (32 random URL-safe characters carry ~190 bits)."""


class AgentMode(str, Enum):
    """``enabled``: the router answers. ``disabled``: the kill switch, static auto-reply only."""

    enabled = "enabled"
    disabled = "disabled"


class MigrationPolicy(str, Enum):
    """What ``helpline serve`` does when the database schema is behind the code."""

    auto = "auto"  # apply pending Alembic migrations at start-up
    refuse = "refuse"  # exit with a message naming ``helpline db upgrade``


class _YamlFileSource(PydanticBaseSettingsSource):
    """Settings from the YAML file named by ``HELPLINE_CONFIG_FILE`` (keys are field names)."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path:
            with open(path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: the config file must hold a mapping of setting -> value")
            unknown = sorted(set(loaded) - set(settings_cls.model_fields))
            if unknown:
                raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
            self._data = loaded

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    """Every knob of the server. Environment variable = ``HELPLINE_`` + upper-case field name,
    except ``agent_mode`` which is read from ``AGENT_MODE``."""

    model_config = SettingsConfigDict(env_prefix="HELPLINE_", extra="ignore", populate_by_name=True)

    # --- storage -------------------------------------------------------------------------------
    data_dir: Path = Field(Path("./var"), description="Embedded database, trained models, caches.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL. Unset: SQLite at DATA_DIR/helpline.db. "
        "Production: postgresql+asyncpg://user:pass@host/db (needs the pgvector extension).",
    )
    redis_url: str | None = Field(
        None,
        description="redis://[:password@]host:port/db. Unset: hot state in process (one server process).",
    )
    redis_namespace: str = Field(
        "helpline", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Prefix of every Redis key, so several deployments can share one Redis.",
    )
    lock_ttl_s: float = Field(
        30.0, gt=0, description="Ticket lock expiry: a crashed process blocks a ticket at most this long."
    )
    migrate: MigrationPolicy = Field(
        MigrationPolicy.auto, description="auto: apply pending migrations at start; refuse: exit."
    )

    # --- server --------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    secret_key: SecretStr | None = Field(
        None, description="Signs web-chat session ids. Unset: a random key is created once and kept "
        "in the database (every process of the deployment shares it). Changing it ends every session."
    )
    legacy_session_ids: bool = Field(
        True, description="Accept the unsigned web-chat session ids of releases before 0.2 while their "
        "customer exists; turn off once the widgets in use have moved to signed ids."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token that shows operational details (/healthz) and lets "
        "helpline replay mark its traffic, for callers that are not on this machine."
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Addresses or networks of your reverse proxies "
        "(comma-separated, e.g. 127.0.0.1,10.0.0.0/8): only their X-Forwarded-For is believed."
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Web pages (origins) that may open the chat besides the "
        "server's own, comma-separated: https://shop.example.com, https://*.example.com, or *."
    )
    max_connections: int = Field(
        1000, ge=10, description="Open TCP connections per process; more are refused with 503."
    )
    max_connections_per_address: int = Field(
        50, ge=1, description="Open TCP connections per peer address (trusted proxies exempt)."
    )
    http_idle_timeout_s: float = Field(
        10.0, gt=0, description="A connection that sends no complete request within this is closed "
        "(header timeout and keep-alive idle timeout)."
    )
    chat_sockets_per_address: int = Field(
        20, ge=1, description="Open chat sockets per client address and process."
    )
    new_sessions_per_address: int = Field(
        30, ge=1, description="New chat sessions one client address may start per session window."
    )
    session_window_s: int = Field(600, ge=1, description="The window of new_sessions_per_address, s.")
    chat_idle_timeout_s: float = Field(
        1800.0, gt=0, description="A chat socket on which the customer sends no message for this "
        "long is closed (code 4000); the widget reconnects when the customer comes back."
    )
    chat_send_timeout_s: float = Field(
        15.0, gt=0, description="A chat client that does not read a frame within this is "
        "disconnected (slow reader); it resumes from its last seq when it reconnects."
    )

    # --- agent inbox ---------------------------------------------------------------------------
    agent_session_idle_s: int = Field(
        4 * 3600, ge=60, description="An agent login unused for this long ends (idle expiry), s."
    )
    agent_session_max_s: int = Field(
        12 * 3600, ge=60, description="An agent login ends this long after it started, used or not, s."
    )
    login_attempts_per_address: int = Field(
        20, ge=1, description="Login attempts one client address may make per login window."
    )
    login_attempts_per_email: int = Field(
        10, ge=1, description="Login attempts for one agent email per login window, right or wrong; "
        "then that email is refused for the rest of the window (the right password too)."
    )
    login_window_s: int = Field(900, ge=1, description="The window of both login limits, s.")
    cookie_secure: bool | None = Field(
        None, description="Mark the agent login cookie Secure (sent over https only). Unset: when "
        "the request came over https (directly, or per X-Forwarded-Proto from a trusted proxy)."
    )

    # --- kill switch ---------------------------------------------------------------------------
    agent_mode: AgentMode = Field(AgentMode.enabled, validation_alias="AGENT_MODE")
    disabled_reply: str = Field(
        "Thanks for your message. Our assistant is switched off right now; we will reply here as soon "
        "as we can.",
        description="Static auto-reply sent to every customer message while AGENT_MODE=disabled.",
    )

    # --- tickets -------------------------------------------------------------------------------
    reopen_window_s: int = Field(
        7 * 24 * 3600, ge=0, description="A resolved ticket reopens on a new message within this."
    )
    max_message_chars: int = Field(
        4000, ge=1, description="Routing reads at most this many characters of a message (the reply "
        "says so); the stored message keeps up to max_stored_chars."
    )
    max_stored_chars: int = Field(
        20000, ge=1, description="Characters of a customer message kept in the database; the rest "
        "is cut (the message records its original length)."
    )
    customer_rate_limit: int = Field(
        60, ge=1, description="Most messages one customer may send per rate window (a message weighs 1 plus 1 "
        "per full 1,000 characters); more are refused."
    )
    customer_rate_window_s: int = Field(60, ge=1, description="The rate window, in seconds.")
    address_rate_limit: int = Field(
        120, ge=1, description="Most messages one network address (all its customers together, e.g. "
        "an office behind one IP) may send per rate window."
    )
    history_turns: int = Field(20, ge=1, description="Most messages a turn reads from its ticket.")
    sweep_interval_s: int = Field(
        10, ge=1, le=60, description="Seconds between sweeps (a periodic job run by one process per "
        "tick) for unanswered messages and unsent outbox entries nobody works on."
    )
    sla_file: Path = Field(
        CONFIG_DIR / "sla.yaml", description="SLA policies per priority and the business-hours calendar "
        "(docs/sla.md)."
    )
    sla_tick_s: int = Field(
        5, ge=1, le=60, description="Seconds between SLA checks (a periodic job run by one process per "
        "tick): a breach is recorded at most this long after its due time."
    )
    stale_after_s: float = Field(
        45.0, gt=0, description="An unanswered message older than this is picked up by the sweep "
        "(a crashed worker's lock has expired by then)."
    )
    outbox_max_attempts: int = Field(
        6, ge=1, description="Send attempts per outbound message before it is marked failed "
        "(retries wait 2, 4, 8, ... s)."
    )
    outbox_lease_s: float = Field(
        30.0, gt=0, description="A send attempt's claim on an outbox entry: a sender that died "
        "holds it at most this long."
    )
    idempotency_ttl_s: int = Field(
        86400, ge=1, description="How long an inbound provider message id is remembered in hot "
        "state for the duplicate fast path (the database remembers it for ever)."
    )
    job_concurrency: int = Field(4, ge=1, description="Background jobs run at once per process.")
    log_message_text: bool = Field(
        False, description="Add the first 200 characters of the customer's message to the per-turn "
        "log line (off: logs carry no customer text)."
    )
    kb_refresh_interval_s: float = Field(
        5.0, gt=0, description="How often a running process checks for a new knowledge-base version."
    )

    # --- order lookups -------------------------------------------------------------------------
    verify_failures_per_customer: int = Field(
        5, ge=1, description="Failed order-ownership checks one customer may make per verify window; "
        "after that order lookups go to a person."
    )
    verify_failures_per_order: int = Field(
        10, ge=1, description="Failed ownership checks against one order number per verify window "
        "(from any customer); after that the order cannot be verified by the bot."
    )
    verify_window_s: int = Field(3600, ge=1, description="The window of both limits above, s.")

    # --- routing -------------------------------------------------------------------------------
    intents_file: Path = Field(CONFIG_DIR / "intents.yaml")
    intent_model_dir: Path | None = Field(
        None, description="Saved intent model to load. Unset: DATA_DIR/models/intent-<hash>."
    )
    confidence_threshold: float = Field(
        0.70, ge=0, le=1, description="Below this intent confidence the turn goes to a human."
    )
    anger_threshold: float = Field(
        -0.6, ge=-1, le=0, description="VADER compound score at or below which a turn escalates."
    )
    sensitive_intents: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["legal_threat", "account_suspension", "chargeback"],
        description="Intents that always go to a human.",
    )
    retrieval_threshold: float = Field(
        0.40, ge=-1, le=1.5, description="Relevance below which no KB answer is given: cosine similarity "
        "plus 0.5 x the lexical (TF-IDF) similarity of the hybrid search."
    )
    retrieval_top_k: int = Field(3, ge=1, le=20)

    # --- knowledge base and orders -------------------------------------------------------------
    kb_dir: Path = Field(
        CONFIG_DIR / "kb", description="Knowledge-base source ingested when the knowledge base is empty: a "
        "folder of Markdown articles, one Markdown file (split by headings) or a JSONL file of chunks."
    )
    orders_file: Path = Field(
        CONFIG_DIR / "orders.json",
        description="Order store: tau-bench-style orders.json (order_id -> order).",
    )

    # --- escalation triggers (bot/escalation.py, bot/language.py) --------------------------------
    fuzzy_match_cutoff: float = Field(
        0.8, ge=0.5, le=1, description="difflib ratio at or above which a misspelt word (not an English "
        "word itself) is read as a trigger word: 'humen' -> human, 'operater' -> operator. 1 = exact only."
    )
    replies_file: Path = Field(
        CONFIG_DIR / "replies.yaml",
        description="What the assistant says in its own words: names, greeting and suggested questions, "
        "clarifying question, off-topic reply, handoff texts, apologies (see config/replies.py).",
    )
    playbook_file: Path = Field(
        CONFIG_DIR / "playbook.yaml",
        description="Support playbook: the next step the handoff brief suggests, by intent and escalation "
        "reason (see bot/playbook.py).",
    )
    sensitive_topics_file: Path | None = Field(
        CONFIG_DIR / "sensitive_topics.yaml",
        description="Sensitive topics (topic -> phrases) that always go to a person. Unset: none.",
    )
    conversation_sentiment_threshold: float = Field(
        -0.35, ge=-1, le=0, description="Escalate when the exponentially weighted mean VADER compound "
        "of the customer's turns since the last handoff (2 turns or more) is at or below this."
    )
    conversation_sentiment_alpha: float = Field(
        0.5, gt=0, le=1, description="Weight of the newest turn in that mean (m = a*s + (1-a)*m_prev)."
    )
    negative_turns_limit: int = Field(
        3, ge=0, description="Escalate after this many consecutive customer turns at or below "
        "negative_turn_threshold (0: off; at least 2 otherwise)."
    )
    negative_turn_threshold: float = Field(
        -0.25, ge=-1, le=0, description="VADER compound at or below which a turn counts as negative."
    )
    apology_sentiment: float = Field(
        -0.4, ge=-1, le=0, description="VADER compound score at or below which a reply the bot gives "
        "without a handoff starts with the apology of config/replies.yaml that fits the topic."
    )
    clarify_limit: int = Field(
        2, ge=0, description="Clarifying questions and off-topic replies in a row after which the next "
        "message the bot cannot act on goes to a person; 0: never clarify, hand over at once."
    )
    article_score_midpoint: float = Field(
        0.75, ge=0, le=1.5, description="Knowledge-base search score (cosine + 0.5 x lexical) at which an "
        "article alone is even odds to answer the question; with article_score_scale it maps the score to "
        "the probability combined with the intent confidence (see docs/conversations.md)."
    )
    article_score_scale: float = Field(
        0.05, gt=0, le=1, description="Width of the logistic curve from search score to article "
        "probability: smaller is steeper."
    )
    repeated_failure_limit: int = Field(
        2, ge=0, description="Escalate when this many turns since the last handoff failed (see "
        "failure_reasons); 0: off."
    )
    failure_reasons: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "customer_said_not_helped", "order_not_found", "asked_slot_again",
            "low_confidence", "no_kb_match", "unknown_intent",
        ],
        description="What counts as the bot failing a turn (comma-separated): customer_said_not_helped, "
        "order_not_found, asked_slot_again, and prefixes of the reasons of turns that did not escalate.",
    )
    repeat_similarity: float = Field(
        0.85, ge=0, le=2.0, description="Cosine similarity at or above which a customer message "
        "repeats an earlier one of the ticket (same order ids and emails); above 1: off."
    )
    repeat_min_words: int = Field(3, ge=1, description="Shorter messages never count as repeats.")
    repeat_ignore_intents: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["greeting", "thanks", "goodbye"],
        description="Intents whose repetition is normal (comma-separated).",
    )
    supported_languages: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["en"],
        description="ISO 639-1 codes the bot answers in; other languages go to a person tagged with "
        "the language while no reasoning tier is configured (comma-separated).",
    )
    language_candidates: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "en", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "da", "nb", "fi", "tr", "ru", "uk", "ar",
            "he", "zh", "ja", "ko", "hi", "vi", "id", "ro", "cs", "hu", "el",
        ],
        description="ISO 639-1 codes the language detector chooses between (must include the "
        "supported ones; comma-separated). Empty: no language detection.",
    )
    language_low_accuracy: bool = Field(
        True, description="lingua's low-accuracy mode (trigrams): ~60 MB and 0.1 s to load for the 27 "
        "default candidates; false: high accuracy, ~650 MB and ~1.7 s."
    )
    language_min_words: int = Field(
        4, ge=1, description="Messages with fewer words of letters are never judged by language."
    )
    language_max_supported_confidence: float = Field(
        0.05, ge=0, le=1, description="A message is in an unsupported language when the supported "
        "languages together get at most this relative confidence."
    )
    language_max_english_share: float = Field(
        0.6, ge=0, le=1, description="With English supported, a message whose share of English words "
        "is at least this is never judged foreign (guards against the detector on short messages)."
    )

    # --- handoff webhook (helpline/webhooks.py; docs/handoff-webhook.md) -------------------------
    # The secret comes before the URL: the URL's check reads it (fields are validated in order), so
    # a refusal names the URL and never echoes the secret.
    handoff_webhook_secret: SecretStr | None = Field(
        None, description="Signs every handoff-webhook request (HMAC-SHA256, the Helpline-Signature "
        "header); at least 32 characters, required with handoff_webhook_url. Generate one with "
        "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'."
    )
    handoff_webhook_url: HttpUrl | None = Field(
        None, description="Your help desk's endpoint for ticket.escalated, ticket.sla_breached and "
        "ticket.resolved events (POSTed as signed JSON). Unset: no events are recorded or sent."
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=120, description="One webhook request's limit (connect and whole response), s; "
        "a slower receiver counts as failed and is retried."
    )
    webhook_max_attempts: int = Field(
        12, ge=1, le=100, description="Send attempts per webhook event before it is marked failed."
    )
    webhook_retry_base_s: float = Field(
        5.0, gt=0, description="Wait before the first webhook retry; each next one doubles, up to "
        "webhook_retry_max_s, each with random jitter of up to half (s)."
    )
    webhook_retry_max_s: float = Field(
        1800.0, gt=0, description="Longest wait between two webhook attempts, s."
    )

    @field_validator("handoff_webhook_url", mode="after")
    @classmethod
    def _check_webhook_secret(cls, value: HttpUrl | None, info: ValidationInfo) -> HttpUrl | None:
        secret = info.data.get("handoff_webhook_secret")
        if value is not None and (secret is None or len(secret.get_secret_value()) < MIN_WEBHOOK_SECRET_CHARS):
            raise ValueError(
                f"a webhook URL needs HELPLINE_HANDOFF_WEBHOOK_SECRET of at least {MIN_WEBHOOK_SECRET_CHARS} "
                "characters to sign its requests: generate one with "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value
    # --- end of handoff webhook ------------------------------------------------------------------

    @field_validator("allowed_origins", mode="after")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        import re

        origin = re.compile(r"https?://[A-Za-z0-9*.-]+(:[0-9]{1,5})?/?")
        for entry in value:
            if entry != "*" and not origin.fullmatch(entry):
                raise ValueError(
                    f"{entry!r} is not an origin: write scheme://host[:port], e.g. https://shop.example.com "
                    "or https://*.example.com, or * for any"
                )
        return value

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None
        return value

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # Resolved once, here: a relative default read later from another working directory would
        # silently point at another (empty) database.
        return value.expanduser().resolve()

    @field_validator(
        "failure_reasons", "repeat_ignore_intents", "supported_languages", "language_candidates",
        "trusted_proxies", "allowed_origins", mode="before"
    )
    @classmethod
    def _split_escalation_csv(cls, value: Any) -> Any:
        return cls._split_csv(value)

    @field_validator("sensitive_intents", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The config file is the one place outside this object that the environment names.
        yaml_source = _YamlFileSource(settings_cls, os.environ.get("HELPLINE_CONFIG_FILE"))
        return (init_settings, env_settings, yaml_source)

    # --- derived ---------------------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        """The database URL in use: the configured one, or SQLite under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'helpline.db').resolve()}"

    @property
    def database_display(self) -> str:
        """The database in use, for logs and command output: the SQLite file, or the URL with any
        password hidden."""
        if not self.database_url:
            return str(self.data_dir / "helpline.db")
        from sqlalchemy.engine import make_url

        return make_url(self.database_url).render_as_string(hide_password=True)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
