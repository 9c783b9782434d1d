"""One pydantic-settings Settings object, built once in __main__ and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_KNOWLEDGE_DIR = Path(__file__).resolve().parent.parent / "knowledge"


def _split_csv(value: object) -> object:
    # ADMIN_EMAILS="a@x.com, b@x.com" reads better in a .env file than a JSON list.
    if isinstance(value, str):
        return tuple(part.strip().casefold() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Configuration; the environment variable names are a contract (see README)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True)

    webex_access_token: SecretStr | None = None
    webex_webhook_secret: SecretStr | None = None
    webex_api_url: AnyHttpUrl = AnyHttpUrl("https://webexapis.com/v1")
    public_url: AnyHttpUrl | None = None
    helpdesk_room_id: str | None = None
    # The language answers are in when a message does not say (too short to tell, and none before it).
    default_language: Literal["en", "de", "fr", "es", "pt", "it"] = "en"
    # The language of the helpdesk space: its ticket cards and notices, whatever the requester writes in.
    helpdesk_language: Literal["en", "de", "fr", "es", "pt", "it"] = "en"
    database_url: str = "sqlite:///./helpdesk-bot.db"
    admin_emails: Annotated[tuple[str, ...], NoDecode] = ()
    allowed_email_domains: Annotated[tuple[str, ...], NoDecode] = ()
    knowledge_dir: Path = DEFAULT_KNOWLEDGE_DIR
    port: int = Field(default=8080, ge=1, le=65535)
    host: str = "0.0.0.0"  # noqa: S104 - a webhook receiver must be reachable from outside the container
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # How long a worker's claim on an event lasts without a heartbeat: after a crash (kill -9) the event is
    # taken up again, by a restart or another replica, within about this long. Live workers renew every third.
    worker_lease_seconds: float = Field(default=30.0, ge=2.0, le=3600.0)
    # Events handled at once per process: the work waits on Webex, so a slow API needs many in flight.
    worker_concurrency: int = Field(default=32, ge=1, le=1000)
    # Per-call timeout of Webex API requests (each retry gets its own).
    webex_timeout_seconds: float = Field(default=10.0, gt=0.0, le=120.0)
    # Handled events, delivered ITSM items and the conversation log older than this are deleted (hourly);
    # tickets and the stats' records stay. 0 keeps everything.
    retention_days: float = Field(default=14.0, ge=0.0, le=3650.0)
    purge_interval_seconds: float = Field(default=3600.0, ge=1.0, le=86400.0)
    # Floods: messages and card clicks per person per minute (the excess gets one "slow down" note, then
    # nothing), and new tickets per person per hour. Generous for people, tight for scripts; 0 turns one off.
    rate_limit_per_minute: int = Field(default=30, ge=0, le=100_000)
    # Open HTTP connections; past it the oldest is closed (slow or hostile clients hold the oldest ones).
    max_connections: int = Field(default=1000, ge=10, le=1_000_000)
    tickets_per_hour: int = Field(default=5, ge=0, le=10_000)
    # How often each replica reports in and checks whether another one reloaded the knowledge.
    replica_check_seconds: float = Field(default=2.0, ge=0.05, le=300.0)

    # Escalation links: override the defaults in knowledge/links.toml without editing the files.
    helpdesk_portal_url: str | None = None
    helpdesk_space_url: str | None = None
    admin_contact_url: str | None = None

    # Local mode: where the Adaptive Cards renderer is cached after npm fetches it.
    renderer_cache_dir: Path | None = None
    xdg_cache_home: Path | None = None

    # How events reach the bot: webhooks need PUBLIC_URL; the websocket needs no public address ("auto" picks).
    webex_inbound: Literal["webhook", "websocket", "auto"] = "auto"
    # Where websocket discovery starts (GET {url}/catalog?format=hostmap names the device service).
    webex_u2c_url: AnyHttpUrl = AnyHttpUrl("https://u2c.wbx2.com/u2c/api/v1")
    # The websocket device of this process, reused by name across restarts; one per replica.
    webex_device_name: str | None = Field(default=None, min_length=1, max_length=100)
    # After a gap in the websocket, messages up to this old are fetched and answered (0: none).
    webex_catch_up_hours: float = Field(default=24.0, ge=0.0, le=336.0)

    # Optional outbound ITSM webhook for ticket events.
    ticket_webhook_url: AnyHttpUrl | None = None
    ticket_webhook_secret: SecretStr | None = None

    @field_validator("admin_emails", "allowed_email_domains", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @property
    def local_mode(self) -> bool:
        """Without a bot token the bot runs against the local playground instead of Webex."""
        return self.webex_access_token is None or not self.webex_access_token.get_secret_value()

    @property
    def inbound(self) -> Literal["local", "webhook", "websocket"]:
        """The inbound path in effect: local mode without a token, else WEBEX_INBOUND, where auto means
        webhooks when PUBLIC_URL is set and the websocket when it is not."""
        if self.local_mode:
            return "local"
        if self.webex_inbound == "auto":
            return "webhook" if self.public_url is not None else "websocket"
        return self.webex_inbound

    @property
    def link_overrides(self) -> dict[str, str]:
        pairs = {
            "helpdesk-portal": self.helpdesk_portal_url,
            "helpdesk-space": self.helpdesk_space_url,
            "admin-contact": self.admin_contact_url,
        }
        return {k: v for k, v in pairs.items() if v}

    def is_admin(self, email: str) -> bool:
        return email.casefold() in self.admin_emails

    def is_allowed(self, email: str) -> bool:
        if not self.allowed_email_domains:
            return True
        domain = email.rpartition("@")[2].casefold()
        return domain in self.allowed_email_domains


def describe_settings_error(exc: ValidationError) -> str:
    """One line per bad value, naming the environment variable rather than the Python field."""
    lines = []
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]).upper() if err["loc"] else "configuration"
        lines.append(f"{name}: {err['msg']}")
    return "; ".join(lines)
