"""One Settings object, built once from ``PARCEL_*`` environment variables and passed down.

Every field has a default that works against the embedded dev stack. A bad value raises
:class:`ConfigError` whose message names the variable and the fix, in one line.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from parcel_stream.learner import LearnerConfig
    from parcel_stream.pipeline import StateConfig
    from parcel_stream.risk import RiskConfig

PREFIX = "PARCEL_"
SECRETS = ("kafka_sasl_password", "redis_password")
# PARCEL_* variables read outside Settings: the dev broker binary, the fuzz test budget
OTHER_VARIABLES = {"PARCEL_BROKER_BIN", "PARCEL_FUZZ_EXAMPLES"}
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")
CONSUME_MODES = ("batches", "events")


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and how to fix it."""


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, ""))


# a batch is scored in chunks of at most this much input: 3 MiB keeps a worker's RSS under
# 300 MB with batch records, at no cost in parcels/s measured (``benchmarks/RESULTS.md``)
DEFAULT_CHUNK_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Runtime configuration. Field ``foo_bar`` is read from ``PARCEL_FOO_BAR``."""

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    app_id: str = "parcel-stream"
    topic_manifests: str = "parcel-manifests"
    topic_holds: str = "parcel-holds"
    topic_decisions: str = "parcel-decisions"
    topic_rejects: str = "parcel-rejects"
    topic_exam_results: str = "parcel-exam-results"
    partitions: int = 4
    # Kafka security: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. The CA file verifies the
    # brokers (empty: the system's CAs); cert and key files are for mutual TLS.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_ssl_ca_file: str = ""
    kafka_ssl_cert_file: str = ""
    kafka_ssl_key_file: str = ""
    kafka_ssl_check_hostname: str = "true"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    # Faust consumer tuning. The dev broker joins a new group after about half the
    # rebalance timeout, so development and tests set these to a few seconds.
    broker_rebalance_timeout_s: float = 20.0
    broker_session_timeout_s: float = 20.0
    broker_heartbeat_interval_s: float = 1.0
    commit_interval_s: float = 1.0
    # Longest a consumer fetch waits for data; bounds added latency at low load.
    fetch_max_wait_ms: int = 20
    # read_committed: records of aborted (and still open) transactions are not consumed.
    # The worker and the tools that read topics use it.
    kafka_isolation_level: str = "read_committed"
    # Batching: Kafka records per agent batch and the longest wait to fill one.
    batch_max_records: int = 200
    batch_within_s: float = 0.01
    # batches: the consumer hands the scoring agent each fetch's records as one list
    # (agents/faust_transport.py); events: one Faust event per record, batched by
    # take_events (batch_within_s), Faust's own path
    consume: str = "batches"
    # The decisions topic's records: lines (NDJSON, one decision.v1 object a parcel) or
    # columns (one decision-batch.v1 object a record: a fifth of the bytes, cheaper to build)
    decisions_format: str = "lines"
    # Input limits: larger records or batch records are rejected, not processed.
    max_record_bytes: int = 1024 * 1024
    max_parcels_per_record: int = 5_000
    # A batch is scored in chunks of at most this many input bytes (bounds worker memory).
    chunk_max_bytes: int = DEFAULT_CHUNK_BYTES
    # Parse the next chunk of a batch while Redis applies this one (one chunk more in memory)
    parse_ahead: bool = True
    # The backtest's columnar cache of parsed feeds ("": ~/.cache/parcel-stream/backtest)
    backtest_cache_dir: str = ""
    # Redis reputation store
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    redis_key_prefix: str = "ps"
    # Redis security: a rediss:// URL uses TLS. ACL user and password may also be in the
    # URL; these win over it (keep them in a secret, not in the URL).
    redis_username: str = ""
    redis_password: str = field(default="", repr=False)
    redis_ssl_ca_file: str = ""
    redis_ssl_cert_file: str = ""
    redis_ssl_key_file: str = ""
    # Redis Cluster: the keys spread over PARCEL_REDIS_SHARDS hash tags (fixed for the
    # life of the data), each batch applied all or nothing over them (two phases). WAIT
    # for this many replicas after each write (0 = off; see docs/operations.md).
    redis_cluster: bool = False
    redis_shards: int = 16
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 100
    # Reputation: recent-weighted counts halve every this many days (old behaviour fades)
    reputation_half_life_days: float = 90.0
    # A parcel id seen again within this many days is a repeat (identical content: the
    # original decision is re-emitted, no state changes) or an amendment (rescored, its
    # original's contribution taken back). About 220 bytes of Redis memory per parcel id.
    repeat_window_days: float = 14.0
    # Split shipments: parcels of one shipper to one address within this window add up.
    split_window_hours: float = 72.0
    # How long state lives after its last update (Redis TTLs): shippers and sellers,
    # consignee addresses (shippers seen, violations), examined parcels and exam marks.
    entity_ttl_days: float = 400.0
    address_ttl_days: float = 30.0
    exam_ttl_days: float = 180.0
    # Adaptive weights: off | shadow (learns, scores unaffected) | on (learned per-rule
    # points added to scores); see parcel_stream/learner.py
    learner_mode: str = "shadow"
    learner_learning_rate: float = 0.05
    learner_l2: float = 0.001
    learner_max_adjust_points: float = 20.0
    learner_refresh_s: float = 5.0
    # The learned risk model (parcel_stream/risk.py, docs/learning.md): off | shadow
    # (probability and learned reasons reported, trained by exam results, lanes from the
    # rules) | on (lanes from the probability). Its weights live in the learner state.
    risk_model: str = "off"
    risk_hold_probability: float = 0.5
    risk_review_probability: float = 0.3
    # with the model on: hold about this share of each hub's parcels (0: the fixed
    # probability thresholds above)
    risk_capacity_pct: float = 0.0
    risk_ipw_clip: float = 5.0
    risk_learning_rate: float = 0.05
    risk_half_life_days: float = 180.0
    # learned keys whose decayed examinations fall under this are dropped (the exam
    # consumer sweeps every PARCEL_RISK_PRUNE_S)
    risk_evict_below: float = 0.25
    risk_prune_s: float = 3600.0
    # each worker keeps a copy of the learned counts (brought up to date from their change
    # log before every batch) of up to this many keys per shard; 0: read them each batch
    risk_replica_keys: int = 1_000_000
    # Scoring: the rule-set file (empty = the built-in default). The threshold and lane
    # scores come from the rule set; set these only to override it.
    rules_file: str = ""
    duty_free_threshold_usd: float | None = None
    review_score: float | None = None
    hold_score: float | None = None
    # The officers' workbench (docs/workbench.md): its case store (sqlite:///FILE, or
    # postgresql://USER:PASSWORD@HOST:PORT/DB shared by several instances), where it
    # listens, its consumer group on the holds topic, the service-level time of a hold,
    # and whether cookies are Secure (set true behind TLS).
    workbench_db: str = field(default="sqlite:///.parcel-stream/workbench.db", repr=False)
    workbench_host: str = "127.0.0.1"
    workbench_port: int = 8080
    workbench_group: str = "parcel-stream-workbench"
    workbench_sla_minutes: float = 240.0
    workbench_secure_cookies: bool = False
    # Operations
    # Metrics and health port: 0 = any free port (written to DATA_DIR/metrics.port), -1 = off
    metrics_port: int = 9464
    data_dir: str = ".parcel-stream/worker"
    log_level: str = "info"
    # text (human) or json (one object per line, for log shippers)
    log_format: str = "text"

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("redis_url", "workbench_db"):
                value = _mask_url(value)
            elif f.name in SECRETS and value:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``PARCEL_*`` variables; keyword overrides win over both."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = PREFIX + f.name.upper()
            if var in env:
                values[f.name] = _convert(var, env[var], f.type)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str] | None = None) -> list[str]:
        """``PARCEL_*`` variables that are not settings (a misspelt name would otherwise be
        ignored without a word). Names only: values may be secrets."""
        env = os.environ if environ is None else environ
        known = {PREFIX + f.name.upper() for f in fields(cls)} | OTHER_VARIABLES
        return sorted(k for k in env if k.startswith(PREFIX) and k not in known)

    def learner_config(self) -> LearnerConfig:
        from parcel_stream.learner import LearnerConfig

        return LearnerConfig(
            mode=self.learner_mode,  # type: ignore[arg-type]  # validated
            learning_rate=self.learner_learning_rate,
            l2=self.learner_l2,
            max_adjust_points=self.learner_max_adjust_points,
        )

    def young_threshold(self, chunk_bytes: int | None = None) -> int:
        """The collector's threshold for its youngest generation, for chunks of
        ``chunk_bytes`` of input (default: ``chunk_max_bytes``; ``cli.main`` sets it for
        every command, the worker after each chunk it takes). A chunk's objects (one per 70
        bytes of input or so) live until its batch ends, and the next chunk's, parsed ahead,
        with them; each collection rescans every live one, and pauses the longer the higher
        the threshold. So: about three chunks' worth, at least 50,000 (a pause of about 28
        ms). At 50,000 throughout, a worker's batch records ran a fifth slower and a
        backtest from JSON 15 %; at three full chunks' worth throughout, the worker's p99
        at 1,000 parcels/s (chunks of a few kilobytes) was 30-70 ms worse
        (``benchmarks/RESULTS.md``)."""
        cap = max(50_000, self.chunk_max_bytes // 24)
        size = self.chunk_max_bytes if chunk_bytes is None else chunk_bytes
        return min(cap, max(50_000, size // 24))

    def risk_config(self) -> RiskConfig:
        from parcel_stream.risk import RiskConfig

        return RiskConfig(
            mode=self.risk_model,  # type: ignore[arg-type]  # validated
            hold_probability=self.risk_hold_probability,
            review_probability=self.risk_review_probability,
            capacity_pct=self.risk_capacity_pct,
            learning_rate=self.risk_learning_rate,
            half_life_ms=self.risk_half_life_days * 86_400_000.0,
            ipw_clip=self.risk_ipw_clip,
        )

    @property
    def half_life_ms(self) -> float:
        return self.reputation_half_life_days * 86_400_000.0

    def state_config(self) -> StateConfig:
        from parcel_stream.pipeline import StateConfig

        return StateConfig(self.split_window_hours * 3_600_000.0, self.half_life_ms)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """The ``PARCEL_*`` variables that rebuild these settings in another process."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[PREFIX + f.name.upper()] = "" if value is None else str(value)
        return out


def _bool(raw: str) -> bool:
    text = raw.lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "int": int, "float": float, "str": str, "bool": _bool,
}  # fmt: skip


def _convert(var: str, raw: str, type_name: Any) -> Any:
    name = str(type_name)
    if name.endswith(" | None"):
        if raw.strip() == "":
            return None
        name = name[: -len(" | None")]
    conv = _CONVERTERS[name]
    try:
        value = conv(raw.strip())
    except ValueError:
        if conv is _bool:
            raise ConfigError(f"{var}={raw!r} is not true or false; set e.g. {var}=true") from None
        kind = "an integer" if conv is int else "a number"
        raise ConfigError(f"{var}={raw!r} is not {kind}; set e.g. {var}=1") from None
    return value


_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{PREFIX}{name.upper()}: {message}")


def _validate(s: Settings) -> None:
    for name in (
        "topic_manifests",
        "topic_holds",
        "topic_decisions",
        "topic_rejects",
        "topic_exam_results",
    ):
        _require(
            bool(_TOPIC_RE.match(getattr(s, name))),
            name,
            "topic names use letters, digits, '.', '_' and '-' only (max 249)",
        )
    topics = [s.topic_manifests, s.topic_holds, s.topic_decisions, s.topic_rejects,
              s.topic_exam_results]  # fmt: skip
    _require(len(set(topics)) == 5, "topic_holds", "the five topics must have distinct names")
    for host in s.kafka_bootstrap.split(","):
        _require(
            bool(re.match(r"^[^:\s]+:\d{1,5}$", host.strip())),
            "kafka_bootstrap",
            f"{host!r} is not host:port; set e.g. PARCEL_KAFKA_BOOTSTRAP=127.0.0.1:9092",
        )
    _require(
        s.redis_url.startswith(("redis://", "rediss://", "unix://")),
        "redis_url",
        "must start with redis://, rediss:// or unix://, e.g. redis://127.0.0.1:6379/0",
    )
    _require(1 <= s.redis_shards <= 1024, "redis_shards", "must be between 1 and 1024")
    _require(0 <= s.redis_wait_replicas <= 16, "redis_wait_replicas", "must be 0..16 (0 = off)")
    _require(1 <= s.redis_wait_timeout_ms <= 60_000, "redis_wait_timeout_ms", "must be 1..60000")
    _require(
        not s.redis_cluster or not s.redis_url.startswith("unix://"),
        "redis_url",
        "a cluster is reached over TCP: set a redis:// or rediss:// URL of one of its nodes",
    )
    _require(
        s.workbench_db.startswith(("sqlite:///", "postgresql://", "postgres://")),
        "workbench_db",
        "use sqlite:///path/to/file.db or postgresql://user:password@host:port/database",
    )
    _require(0 <= s.workbench_port <= 65535, "workbench_port", "must be 0..65535 (0: any free)")
    _require(s.workbench_sla_minutes > 0, "workbench_sla_minutes", "must be > 0 minutes")
    _require(1 <= s.partitions <= 10_000, "partitions", "must be between 1 and 10000")
    _require(1 <= s.batch_max_records <= 100_000, "batch_max_records", "must be 1..100000")
    _require(0 < s.batch_within_s <= 60, "batch_within_s", "must be > 0 and <= 60 seconds")
    _require(s.consume in CONSUME_MODES, "consume", "must be batches or events")
    _require(s.max_record_bytes >= 1024, "max_record_bytes", "must be at least 1024")
    _require(s.max_parcels_per_record >= 1, "max_parcels_per_record", "must be at least 1")
    _require(s.chunk_max_bytes >= 1024, "chunk_max_bytes", "must be at least 1024")
    _require(
        s.duty_free_threshold_usd is None or s.duty_free_threshold_usd >= 0,
        "duty_free_threshold_usd",
        "must be >= 0 (0 means no de minimis exemption)",
    )
    for name in ("review_score", "hold_score"):
        value = getattr(s, name)
        _require(value is None or 0 <= value <= 100, name, "must be between 0 and 100")
    if s.review_score is not None and s.hold_score is not None:
        _require(s.review_score <= s.hold_score, "review_score", "must be <= PARCEL_HOLD_SCORE")
    _require(1 <= s.fetch_max_wait_ms <= 60_000, "fetch_max_wait_ms", "must be 1..60000")
    _require(
        s.kafka_isolation_level in ISOLATION_LEVELS,
        "kafka_isolation_level",
        "must be read_committed or read_uncommitted",
    )
    _require(
        0 < s.repeat_window_days <= 400, "repeat_window_days", "must be between 0 and 400 days"
    )
    for name in ("entity_ttl_days", "address_ttl_days", "exam_ttl_days"):
        _require(1 <= getattr(s, name) <= 3650, name, "must be between 1 and 3650 days")
    _require(
        0 < s.split_window_hours <= 24 * 90,
        "split_window_hours",
        "must be between 0 and 2160 hours",
    )
    _require(
        -1 <= s.metrics_port <= 65535,
        "metrics_port",
        "must be a TCP port, 0 (any free port, reported) or -1 (off)",
    )
    for name in (
        "broker_rebalance_timeout_s",
        "broker_session_timeout_s",
        "broker_heartbeat_interval_s",
        "commit_interval_s",
    ):
        _require(getattr(s, name) > 0, name, "must be a positive number of seconds")
    _require(
        s.broker_heartbeat_interval_s < s.broker_session_timeout_s,
        "broker_heartbeat_interval_s",
        "must be smaller than PARCEL_BROKER_SESSION_TIMEOUT_S",
    )
    _require(
        0 < s.reputation_half_life_days <= 36_500,
        "reputation_half_life_days",
        "must be a number of days > 0 (e.g. 90)",
    )
    _require(s.learner_mode in ("off", "shadow", "on"), "learner_mode", "must be off, shadow or on")
    _require(0 < s.learner_learning_rate <= 1, "learner_learning_rate", "must be > 0 and <= 1")
    _require(0 <= s.learner_l2 < 1, "learner_l2", "must be >= 0 and < 1")
    _require(
        0 <= s.learner_max_adjust_points <= 100,
        "learner_max_adjust_points",
        "must be between 0 and 100 score points",
    )
    _require(s.learner_refresh_s > 0, "learner_refresh_s", "must be a positive number of seconds")
    _require(s.risk_model in ("off", "shadow", "on"), "risk_model", "must be off, shadow or on")
    # the forms of decide.DECISIONS_FORMATS
    _require(s.decisions_format in ("lines", "columns"), "decisions_format",
             "must be lines or columns")  # fmt: skip
    _require(
        0 < s.risk_review_probability <= s.risk_hold_probability <= 1,
        "risk_hold_probability",
        "must be <= 1 and >= PARCEL_RISK_REVIEW_PROBABILITY (> 0)",
    )
    _require(
        0 <= s.risk_capacity_pct < 100,
        "risk_capacity_pct",
        "must be a percentage >= 0 and < 100 (0: fixed probability thresholds)",
    )
    _require(s.risk_ipw_clip >= 1, "risk_ipw_clip", "must be >= 1 (1: no weighting)")
    _require(0 < s.risk_learning_rate <= 1, "risk_learning_rate", "must be > 0 and <= 1")
    _require(0 < s.risk_half_life_days <= 36_500, "risk_half_life_days",
             "must be a number of days > 0 (e.g. 180)")  # fmt: skip
    _require(0 <= s.risk_evict_below < 1_000, "risk_evict_below",
             "must be a number of examinations >= 0 (e.g. 0.25)")  # fmt: skip
    _require(
        s.risk_replica_keys >= 0,
        "risk_replica_keys",
        "must be >= 0 (0: read the learned counts from Redis each batch)",
    )
    _require(s.risk_prune_s > 0, "risk_prune_s", "must be a positive number of seconds")
    _require(
        s.log_level.lower() in {"debug", "info", "warning", "error"},
        "log_level",
        "must be one of debug, info, warning, error",
    )
    _require(s.log_format in ("text", "json"), "log_format", "must be text or json")
    _validate_security(s)


def _validate_security(s: Settings) -> None:
    proto = s.kafka_security_protocol
    _require(
        proto in KAFKA_PROTOCOLS, "kafka_security_protocol", "must be " + ", ".join(KAFKA_PROTOCOLS)
    )
    _require(
        s.kafka_ssl_check_hostname in ("true", "false"),
        "kafka_ssl_check_hostname",
        "must be true or false",
    )
    if proto.startswith("SASL"):
        _require(
            s.kafka_sasl_mechanism in SASL_MECHANISMS,
            "kafka_sasl_mechanism",
            "must be " + ", ".join(SASL_MECHANISMS),
        )
        _require(
            bool(s.kafka_sasl_username and s.kafka_sasl_password),
            "kafka_sasl_username",
            f"{proto} needs PARCEL_KAFKA_SASL_USERNAME and PARCEL_KAFKA_SASL_PASSWORD",
        )
    _require(
        bool(s.kafka_ssl_cert_file) == bool(s.kafka_ssl_key_file),
        "kafka_ssl_cert_file",
        "mutual TLS needs both PARCEL_KAFKA_SSL_CERT_FILE and PARCEL_KAFKA_SSL_KEY_FILE",
    )
    _require(
        bool(s.redis_ssl_cert_file) == bool(s.redis_ssl_key_file),
        "redis_ssl_cert_file",
        "mutual TLS needs both PARCEL_REDIS_SSL_CERT_FILE and PARCEL_REDIS_SSL_KEY_FILE",
    )
    for name in (
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        "redis_ssl_ca_file",
        "redis_ssl_cert_file",
        "redis_ssl_key_file",
    ):
        path = getattr(s, name)
        _require(not path or os.path.isfile(path), name, f"{path!r} is not a readable file")
    _require(
        urlsplit(s.redis_url).scheme in ("redis", "rediss", "unix"),
        "redis_url",
        "must start with redis:// (plain), rediss:// (TLS) or unix://",
    )
