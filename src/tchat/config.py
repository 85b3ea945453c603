"""Every setting of tchat in one place.

Each field has an environment name (the guide's names where it has one), a default
and one line of doc. `tchat serve --help` and `docs/configuration.md` are generated
from this class; a unit test keeps the doc file equal to the code.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tchat.files import private_dir

LOG_LEVELS = ("debug", "info", "warn", "error")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """`5s`, `500ms`, `2m`, `30d` or a bare number of seconds → seconds."""
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 5s, 500ms or 30d")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 5s, 500ms or 30d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_host_port(value: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` → (host, port); raises ValueError otherwise."""
    value = value.strip()
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([A-Za-z0-9_.-]+)(?::(\d+))?", value)
    if not match:
        raise ValueError(f"{value!r} is not host or host:port")
    host = match.group(1) or match.group(3)
    port_s = match.group(2) or match.group(4)
    port = int(port_s) if port_s else default_port
    if not 0 < port < 65536:
        raise ValueError(f"port {port} in {value!r} is out of range 1-65535")
    return host, port


def _check_hosts(value: str) -> str:
    for part in value.split(","):
        parse_host_port(part, 9042)
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
HostList = Annotated[str, BeforeValidator(_check_hosts)]


class Settings(BaseSettings):
    """tchat's settings; the env name of each is its alias (case-insensitive)."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", populate_by_name=True, validate_default=True
    )

    # --- server -------------------------------------------------------------------
    host: str = Field("127.0.0.1", alias="TCHAT_HOST", description="Address the HTTP server binds.")
    port: int = Field(8080, ge=1, le=65535, alias="TCHAT_PORT", description="HTTP port.")
    admin_port: int = Field(
        0,
        ge=0,
        le=65535,
        alias="TCHAT_ADMIN_PORT",
        description="Port of the admin listener, always on 127.0.0.1, the only one serving "
        "local-only routes (/dev/token, /sfu/stats?viewers=true); never proxy it (0: any free "
        "port, printed at start).",
    )
    public_url: str = Field(
        "",
        alias="TCHAT_PUBLIC_URL",
        description="Base URL clients use (empty: http://HOST:PORT).",
    )
    data_dir: Path = Field(
        Path(".tchat/data"),
        alias="TCHAT_DATA_DIR",
        description="Directory for the embedded defaults (SQLite file, recordings, secret); "
        "a relative path is taken from the directory tchat starts in.",
    )
    secret: str = Field(
        "",
        alias="TCHAT_SECRET",
        description="HMAC secret signing tokens, ≥ 32 random bytes (empty: generated once "
        "into DATA_DIR/secret).",
    )
    token_ttl: Duration = Field(
        86400.0, gt=0, alias="TCHAT_TOKEN_TTL", description="Lifetime of issued tokens."
    )
    trusted_proxies: str = Field(
        "127.0.0.1",
        alias="TCHAT_TRUSTED_PROXIES",
        description="Peers whose X-Forwarded-For names the client (per-address limits, dev "
        "tokens): comma-separated addresses, or * for any.",
    )
    log_level: str = Field(
        "info", alias="LOG_LEVEL", description="Log verbosity: debug, info, warn, error."
    )

    # --- chat (T070) -----------------------------------------------------------------
    chat_store: Literal["sqlite", "cql"] = Field(
        "sqlite", alias="CHAT_STORE", description="Chat store: sqlite (embedded) or cql."
    )
    scylladb_host: HostList = Field(
        "localhost:9042",
        alias="SCYLLADB_HOST",
        description="ScyllaDB/Cassandra contact points, host:port[,host:port].",
    )
    scylladb_keyspace: str = Field(
        "tchat",
        alias="SCYLLADB_KEYSPACE",
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,47}$",
        description="Keyspace of the chat tables (created if missing).",
    )
    redis_url: str = Field(
        "",
        alias="REDIS_URL",
        description="Redis for fan-out between instances (empty: in-process).",
    )
    chat_max_chars: int = Field(
        500, ge=1, le=10000, alias="CHAT_MAX_CHARS", description="Longest chat message."
    )
    chat_rate_per_s: float = Field(
        5.0, gt=0, alias="CHAT_RATE_PER_S", description="Messages per second one author may post."
    )
    chat_burst: int = Field(
        10, ge=1, alias="CHAT_BURST", description="Messages an author may post at once."
    )
    chat_ttl: Duration = Field(
        30 * 86400.0, gt=0, alias="CHAT_TTL", description="How long messages are kept."
    )
    chat_buckets: int = Field(
        4,
        ge=1,
        le=256,
        alias="CHAT_BUCKETS",
        description="Partitions one room's messages spread over per time window.",
    )
    chat_window: Duration = Field(
        86400.0,
        gt=0,
        alias="CHAT_WINDOW",
        description="Time window of one chat partition (bounds partition size).",
    )
    chat_node_id: int | None = Field(
        None,
        ge=0,
        le=1023,
        alias="CHAT_NODE_ID",
        description="Message-id node of this process (empty: unique from Redis, else random).",
    )
    cql_max_in_flight: int = Field(
        512, ge=1, alias="CQL_MAX_IN_FLIGHT", description="Concurrent CQL requests per process."
    )

    # --- storage and recording (T071) ------------------------------------------------
    storage: Literal["local", "s3"] = Field(
        "local", alias="STORAGE", description="Object store: local directory or s3."
    )
    s3_endpoint: str = Field(
        "http://127.0.0.1:8333", alias="S3_ENDPOINT", description="S3-compatible endpoint URL."
    )
    s3_bucket: str = Field("tchat", alias="S3_BUCKET", description="Bucket for recordings.")
    s3_region: str = Field("us-east-1", alias="S3_REGION", description="S3 region.")
    s3_access_key: str = Field("tchat", alias="S3_ACCESS_KEY", description="S3 access key id.")
    s3_secret_key: str = Field(
        "tchat-secret", alias="S3_SECRET_KEY", description="S3 secret access key."
    )
    recording_segment_seconds: float = Field(
        6.0, gt=0, alias="RECORDING_SEGMENT_SECONDS", description="HLS segment duration."
    )
    recording_retention: Duration = Field(
        30 * 86400.0,
        gt=0,
        alias="RECORDING_RETENTION",
        description="How long recordings are kept after they end.",
    )
    recording_first_segment_seconds: float = Field(
        1.0,
        gt=0,
        alias="RECORDING_FIRST_SEGMENT_SECONDS",
        description="Length of the first two HLS segments (the first is stored within "
        "seconds of going live).",
    )
    recording_no_media_timeout: Duration = Field(
        10.0,
        gt=0,
        alias="RECORDING_NO_MEDIA_TIMEOUT",
        description="A recording with no segment after this long fails.",
    )
    recording_upload_buffer_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1_000_000,
        alias="RECORDING_UPLOAD_BUFFER_BYTES",
        description="Closed segments one recording may keep on disk while storage is down.",
    )
    recording_access: Literal["public", "private"] = Field(
        "public",
        alias="RECORDING_ACCESS",
        description="Who may list recordings and fetch HLS (live and recorded): public = "
        "anyone; private = the holder of a viewer token for the room, like WHEP (signed "
        "/cdn URLs).",
    )
    recording_url_ttl: Duration = Field(
        6 * 3600.0,
        gt=0,
        alias="RECORDING_URL_TTL",
        description="Private mode: longest life of a signed HLS URL (never past its token).",
    )
    recording_s3_presign: bool = Field(
        False,
        alias="RECORDING_S3_PRESIGN",
        description="Private mode with STORAGE=s3: playlists point at presigned S3 URLs for "
        "segments (the bucket must be reachable by viewers) instead of /cdn.",
    )
    recording_disk_budget_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=1_000_000,
        alias="RECORDING_DISK_BUDGET_BYTES",
        description="Closed segments all recordings together may keep on disk waiting for "
        "storage (DATA_DIR/recorder); a segment beyond it is lost, and the recording says so.",
    )
    ffmpeg: str = Field("ffmpeg", alias="FFMPEG", description="FFmpeg executable.")

    # --- SFU and load (T068) ---------------------------------------------------------
    num_sfu_instances: int = Field(
        1,
        ge=1,
        le=64,
        alias="NUM_SFU_INSTANCES",
        description="SFU instance processes `tchat serve` runs (> 1: origin → edge relay cluster).",
    )
    viewers_per_instance: int = Field(
        5000,
        ge=1,
        alias="VIEWERS_PER_INSTANCE",
        description="Load test: viewers per SFU instance.",
    )
    max_connection_time: Duration = Field(
        5.0,
        gt=0,
        alias="MAX_CONNECTION_TIME",
        description="Load test: max average viewer connection time.",
    )

    sfu_udp_host: str = Field(
        "127.0.0.1", alias="SFU_UDP_HOST", description="Address the SFU media UDP socket binds."
    )
    sfu_udp_port: int = Field(
        0,
        ge=0,
        le=65535,
        alias="SFU_UDP_PORT",
        description="SFU media UDP port shared by all peers (0: any free port).",
    )
    sfu_tcp_port: int = Field(
        0,
        ge=0,
        le=65535,
        alias="SFU_TCP_PORT",
        description="ICE over TCP (RFC 6544): a passive TCP candidate on this port beside "
        "the UDP one, for clients whose network blocks UDP (0: off; `make run` sets 8189). "
        "With NUM_SFU_INSTANCES > 1 instance i listens on this port + i.",
    )
    sfu_public_ip: str = Field(
        "",
        alias="SFU_PUBLIC_IP",
        description="Address put in ICE candidates (empty: SFU_UDP_HOST).",
    )
    sfu_consent_timeout: Duration = Field(
        30.0,
        gt=0,
        alias="SFU_CONSENT_TIMEOUT",
        description="End a session after this long without authenticated traffic from the "
        "peer (consent check, SRTP/SRTCP on the selected pair).",
    )
    sfu_connect_timeout: Duration = Field(
        15.0,
        gt=0,
        alias="SFU_CONNECT_TIMEOUT",
        description="ICE and DTLS must complete within this after WHIP/WHEP.",
    )
    sfu_idle_timeout: Duration = Field(
        30.0,
        gt=0,
        alias="SFU_IDLE_TIMEOUT",
        description="End a publish session that sends no media this long.",
    )
    sfu_publisher_grace: Duration = Field(
        20.0,
        ge=0,
        alias="SFU_PUBLISHER_GRACE",
        description="A publisher lost without a DELETE (consent timeout, DTLS failure, no "
        "media) leaves its room open this long: viewers wait, and a new WHIP publish of the "
        "room resumes their media (0: the room ends at once).",
    )
    sfu_sr_interval: Duration = Field(
        1.0,
        gt=0,
        alias="SFU_SR_INTERVAL",
        description="Interval of RTCP sender reports to viewers.",
    )
    sfu_max_peers: int = Field(
        20000,
        ge=1,
        alias="SFU_MAX_PEERS",
        description="WHIP/WHEP sessions per SFU worker before 503.",
    )
    sfu_max_connecting_per_identity: int = Field(
        4,
        ge=1,
        alias="SFU_MAX_CONNECTING_PER_IDENTITY",
        description="WHIP/WHEP sessions one token identity may have connecting (ICE/DTLS not "
        "done) at once; more get 429.",
    )
    sfu_max_connecting_per_address: int = Field(
        16,
        ge=1,
        alias="SFU_MAX_CONNECTING_PER_ADDRESS",
        description="WHIP/WHEP sessions one client address may have connecting at once; more "
        "get 429.",
    )
    sfu_max_handshaking: int = Field(
        32,
        ge=1,
        alias="SFU_MAX_HANDSHAKING",
        description="WHEP sessions doing ICE/DTLS at once per SFU worker; more viewers wait "
        "in arrival order for a slot (a join storm is admitted at the rate handshakes "
        "complete, none fails its handshake for lack of CPU).",
    )
    sfu_join_wait: Duration = Field(
        10.0,
        gt=0,
        alias="SFU_JOIN_WAIT",
        description="Longest a WHEP request waits for a handshake slot before 503 with a "
        "Retry-After estimated from the admission rate.",
    )
    sfu_publisher_reserve: float = Field(
        0.05,
        ge=0,
        lt=1,
        alias="SFU_PUBLISHER_RESERVE",
        description="Share of SFU_MAX_PEERS only publishers may use: viewers get 503 past the "
        "rest.",
    )
    sfu_max_load: float = Field(
        0.9,
        gt=0,
        alias="SFU_MAX_LOAD",
        description="Refuse new sessions (503) while the SFU's own work (its datagram and "
        "timer handlers; a node process's CPU) exceeds this, in cores.",
    )
    ice_servers: str = Field(
        "",
        alias="ICE_SERVERS",
        description="STUN/TURN servers WHIP/WHEP clients are told of in Link headers "
        "(RFC 9725): comma-separated stun:, stuns:, turn:, turns: URIs (empty: none).",
    )
    ice_username: str = Field(
        "", alias="ICE_USERNAME", description="Username for the turn:/turns: ICE_SERVERS."
    )
    ice_credential: str = Field(
        "", alias="ICE_CREDENTIAL", description="Password for the turn:/turns: ICE_SERVERS."
    )
    sfu_record: bool = Field(
        True,
        alias="SFU_RECORD",
        description="Record every WHIP publish to HLS (H.264 video copied, Opus → AAC).",
    )
    sfu_fastpath: Literal["auto", "native", "python"] = Field(
        "auto",
        alias="SFU_FASTPATH",
        description="The per-packet fan-out: native (the tchat_fastpath extension, `make "
        "native`: rewrite, SRTP and one sendmmsg per packet for all viewers), python (the "
        "reference), or auto (native when built; start-up logs which runs).",
    )
    sfu_abr: bool = Field(
        True,
        alias="SFU_ABR",
        description="Adaptive layer per viewer from transport-wide CC feedback (docs/latency.md).",
    )
    sfu_abr_up_after: Duration = Field(
        5.0,
        ge=0,
        alias="SFU_ABR_UP_AFTER",
        description="Climb a layer only after this long of sustained headroom for it.",
    )
    sfu_abr_hold_after_down: Duration = Field(
        10.0,
        ge=0,
        alias="SFU_ABR_HOLD_AFTER_DOWN",
        description="Never climb within this long after a downgrade.",
    )
    sfu_abr_headroom: float = Field(
        1.2,
        ge=1.0,
        le=3.0,
        alias="SFU_ABR_HEADROOM",
        description="Climb to a layer when the estimate exceeds its bitrate by this factor.",
    )
    sfu_abr_initial_bps: float = Field(
        1_000_000,
        gt=0,
        alias="SFU_ABR_INITIAL_BPS",
        description="A new viewer's bandwidth estimate before any feedback, bit/s.",
    )
    sfu_abr_probe_interval: Duration = Field(
        3.0,
        gt=0,
        alias="SFU_ABR_PROBE_INTERVAL",
        description="Time between bandwidth probes (× 1.5 after each failed probe, ≤ 12 s).",
    )
    sfu_abr_probe_max_bps: float = Field(
        4_000_000,
        gt=0,
        alias="SFU_ABR_PROBE_MAX_BPS",
        description="Highest rate a bandwidth probe pads a viewer's stream up to, bit/s.",
    )

    cors_origins: str = Field(
        "auto",
        alias="CORS_ORIGINS",
        description="Origins whose pages may call the WHIP/WHEP, session, chat and "
        "recordings APIs (CORS): comma-separated (https://app.example), * for any; auto = * "
        "when bound to loopback with no TCHAT_PUBLIC_URL, else none (same origin only).",
    )

    # --- web pages (issue 8) -----------------------------------------------------------
    web_dev_tokens: Literal["auto", "on", "off"] = Field(
        "auto",
        alias="WEB_DEV_TOKENS",
        description="POST /dev/token hands viewer/chat tokens to anyone who asks: auto = on "
        "the admin listener, when bound to loopback with no TCHAT_PUBLIC_URL; on = on every "
        "listener (never behind a public proxy); off.",
    )

    # --- performance suite (T070 and all) ----------------------------------------------
    num_writers: int = Field(
        100, ge=1, alias="NUM_WRITERS", description="Chat test: concurrent writers."
    )
    messages_per_sec: int = Field(
        1000,
        ge=1,
        alias="MESSAGES_PER_SEC",
        description="Chat test: messages per writer per second.",
    )
    test_duration_seconds: float = Field(
        60.0, gt=0, alias="TEST_DURATION_SECONDS", description="Performance test duration."
    )

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        if value:
            check_secret(value)
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_dir(cls, value: Path) -> Path:
        # Resolved once, against the working directory of the command that loads the
        # settings (`tchat serve`): FFmpeg and the SFU instance processes are given
        # paths under it while running elsewhere (FFmpeg in its recording's directory).
        return Path(os.path.abspath(value.expanduser()))

    @field_validator("ffmpeg")
    @classmethod
    def _absolute_program(cls, value: str) -> str:
        # a bare name is looked up on PATH wherever it runs; a relative path is not
        if os.sep in value:
            return os.path.abspath(os.path.expanduser(value))
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> str:
        level = str(value).strip().lower()
        if level == "warning":
            level = "warn"
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("ice_servers")
    @classmethod
    def _ice_servers(cls, value: str) -> str:
        for uri in cls.split_list(value):
            scheme = uri.split(":", 1)[0].lower()
            if scheme not in ("stun", "stuns", "turn", "turns") or ":" not in uri:
                raise ValueError(f"{uri!r} is not a stun:, stuns:, turn: or turns: URI")
            if any(c in uri for c in '<>" '):
                raise ValueError(f"{uri!r} has a character a URI cannot hold")
        return value

    @staticmethod
    def split_list(value: str) -> list[str]:
        return [part.strip() for part in value.split(",") if part.strip()]

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins(cls, value: str) -> str:
        for origin in cls.split_list(value):
            if origin in ("*", "auto"):
                continue
            if not re.fullmatch(
                r"https?://[A-Za-z0-9.-]+(:\d{1,5})?|https?://\[[0-9a-fA-F:]+\](:\d{1,5})?", origin
            ):
                raise ValueError(f"{origin!r} is not an origin such as https://app.example:8443")
        return value

    @property
    def cors_allowed_origins(self) -> list[str]:
        """The origins CORS lets in: ["*"], a list, or [] (same origin only)."""
        origins = self.split_list(self.cors_origins)
        if origins == ["auto"]:
            return ["*"] if self._loopback_default else []
        return ["*"] if "*" in origins else [o.rstrip("/") for o in origins if o != "auto"]

    @property
    def _loopback_default(self) -> bool:
        loopback = self.host in ("127.0.0.1", "localhost", "::1")
        return loopback and not self.public_url

    @property
    def dev_tokens_enabled(self) -> bool:
        """Whether the watch page may fetch viewer/chat tokens without one (local use only)."""
        if self.web_dev_tokens != "auto":
            return self.web_dev_tokens == "on"
        return self._loopback_default

    def cql_contact_points(self) -> list[tuple[str, int]]:
        return [parse_host_port(p, 9042) for p in self.scylladb_host.split(",")]

    def token_secret(self) -> str:
        """The signing secret; generated and kept under data_dir when not set."""
        if self.secret:
            return self.secret
        path = self.data_dir / "secret"
        if not path.exists():
            import secrets

            private_dir(path.parent)
            try:  # created 0600 in one step; of two processes starting together, one wins
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(32))
        for _ in range(50):  # the winner may still be writing
            secret = path.read_text().strip()
            if secret:
                try:
                    return check_secret(secret)
                except ValueError as exc:
                    raise SettingsError(f"{path}: {exc}; remove it or set TCHAT_SECRET") from None
            import time

            time.sleep(0.01)
        raise SettingsError(f"{path} is empty; remove it or set TCHAT_SECRET")


MIN_SECRET_BYTES = 32
MIN_SECRET_BITS = 128.0


def check_secret(secret: str) -> str:
    """Refuse a signing secret that is short or visibly weak; ValueError says which.

    A string's entropy cannot be measured, only estimated from its characters: we require
    32 bytes and a character-statistics estimate (length × Shannon entropy of its
    character frequencies) of 128 bits, which refuses short, repeated and small-alphabet
    secrets but cannot tell a random string from a memorable one. The generated default
    (32 random bytes) and `openssl rand -base64 32` have 256 bits.
    """
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        raise ValueError(
            f"the secret has {size} bytes; use at least {MIN_SECRET_BYTES} random bytes "
            "(openssl rand -base64 32), or leave it empty to have one generated"
        )
    counts = Counter(secret)
    n = len(secret)
    estimate = max(0.0, -n * sum(c / n * math.log2(c / n) for c in counts.values()))
    if estimate < MIN_SECRET_BITS:
        raise ValueError(
            f"the secret looks weak (about {estimate:.0f} bits: repeated or few distinct "
            "characters); use random bytes (openssl rand -base64 32)"
        )
    return secret


class SettingsError(Exception):
    """A setting has a bad value; the message is one line naming the variable."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_error(exc)) from None


def describe_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        field = Settings.model_fields.get(name)
        env = field.alias if field and field.alias else name.upper()
        msg = err["msg"].removeprefix("Value error, ")
        shown = "<hidden>" if env == "TCHAT_SECRET" else repr(err.get("input"))
        parts.append(f"invalid setting {env}={shown}: {msg}")
    return "; ".join(parts)


def settings_table() -> list[tuple[str, str, str]]:
    """(env name, default, doc) of every setting, in declaration order."""
    rows = []
    for name, field in Settings.model_fields.items():
        env = field.alias or name.upper()
        default = field.default
        if isinstance(default, Path):
            default = str(default)
        rows.append((env, "" if default is None else str(default), field.description or ""))
    return rows


def configuration_markdown() -> str:
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable (names are case-insensitive). A bad value",
        "stops start-up with one line naming the variable. Durations accept `500ms`, `5s`,",
        "`2m`, `1h`, `30d` or plain seconds. Generated by `tchat config --markdown`;",
        "a unit test keeps this file equal to the code.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for env, default, doc in settings_table():
        lines.append(f"| `{env}` | `{default}` | {doc} |")
    lines += ["", *OUTSIDE_SETTINGS]
    return "\n".join(lines) + "\n"


# Variables read outside `Settings`, each for a reason (docs/configuration.md shows them).
OUTSIDE_SETTINGS = [
    "## Read outside these settings",
    "",
    "Not settings of a running tchat, so not in `Settings`:",
    "",
    "| variable | default | read by | why outside |",
    "|---|---|---|---|",
    "| `TCHAT_CACHE_DIR` | `~/.cache/tchat` | `tchat services`, setup scripts | where built"
    " tools (SeaweedFS) and downloaded jars (Cassandra) are kept; read by shell scripts"
    " before any Python runs |",
    "| `TCHAT_STATE_DIR` | `.tchat` | `tchat services` | the dev services' data and pid"
    " files, shared by scripts and tests that never load the server's settings |",
    "| `TCHAT_REPORTS_DIR` | `reports` | the performance suite | where results go; a"
    " property of the test run, not of a server |",
    "| `TCHAT_PERF_MEDIA` | `.tchat/perf-media` | the load generator | its cached"
    " synthetic media; a load tool's cache |",
    "| `TCHAT_SFU_CONTROL_KEY` | derived from the token secret | SFU instance processes |"
    " handed by the supervisor to the processes it starts (the control API's key); not"
    " for users to set |",
]
