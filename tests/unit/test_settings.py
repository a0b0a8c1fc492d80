from pathlib import Path

import pytest

from parcel_stream.settings import ConfigError, Settings


def test_defaults_are_valid() -> None:
    s = Settings()
    assert s.partitions == 4 and s.hold_score is None and s.rules_file == ""


def test_from_env_reads_prefixed_variables() -> None:
    s = Settings.from_env({"PARCEL_PARTITIONS": "8", "PARCEL_DUTY_FREE_THRESHOLD_USD": "0",
                           "PARCEL_TOPIC_HOLDS": "holds-x", "OTHER": "1"})  # fmt: skip
    assert (s.partitions, s.duty_free_threshold_usd, s.topic_holds) == (8, 0.0, "holds-x")
    assert Settings.from_env({"PARCEL_HOLD_SCORE": ""}).hold_score is None


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PARCEL_PARTITIONS": "four"}, "PARCEL_PARTITIONS='four' is not an integer"),
        ({"PARCEL_PARTITIONS": "0"}, "PARCEL_PARTITIONS: must be between 1 and 10000"),
        (
            {"PARCEL_KAFKA_BOOTSTRAP": "localhost"},
            "PARCEL_KAFKA_BOOTSTRAP: 'localhost' is not host:port",
        ),
        ({"PARCEL_REDIS_URL": "http://x"}, "PARCEL_REDIS_URL: must start with redis://"),
        ({"PARCEL_REVIEW_SCORE": "90", "PARCEL_HOLD_SCORE": "60"}, "PARCEL_REVIEW_SCORE"),
        ({"PARCEL_DUTY_FREE_THRESHOLD_USD": "-1"}, "PARCEL_DUTY_FREE_THRESHOLD_USD: must be >= 0"),
        ({"PARCEL_TOPIC_HOLDS": "parcel-manifests"}, "distinct"),
        ({"PARCEL_LOG_LEVEL": "loud"}, "PARCEL_LOG_LEVEL"),
        ({"PARCEL_DECISIONS_FORMAT": "csv"}, "PARCEL_DECISIONS_FORMAT: must be lines or columns"),
    ],
)
def test_bad_values_give_one_line_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    message = str(err.value)
    assert fragment in message and "\n" not in message


def test_repr_masks_redis_password() -> None:
    s = Settings(redis_url="redis://worker:s3cret@redis.internal:6379/0")
    assert "s3cret" not in repr(s) and "worker:***@redis.internal:6379" in repr(s)


def test_as_env_round_trips() -> None:
    s = Settings(partitions=3, batch_within_s=0.2, redis_url="redis://127.0.0.1:1/0")
    assert Settings.from_env(s.as_env()) == s


def test_security_settings_are_checked(tmp_path: Path) -> None:
    from parcel_stream.adapters.security import faust_credentials, kafka_client_options

    with pytest.raises(ConfigError, match="PARCEL_KAFKA_SASL_USERNAME"):
        Settings(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ConfigError, match="PARCEL_KAFKA_SECURITY_PROTOCOL"):
        Settings(kafka_security_protocol="TLS")
    with pytest.raises(ConfigError, match="not a readable file"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="rediss://"):
        Settings(redis_url="http://127.0.0.1:6379")
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="ps",
        kafka_sasl_password="pw-not-shown",
    )
    opts = kafka_client_options(s)
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["ssl_context"] is not None
    assert "pw-not-shown" not in repr(s)
    creds = faust_credentials(s)
    assert creds is not None and creds.protocol.value == "SASL_SSL"
    assert faust_credentials(Settings()) is None


def test_unknown_parcel_variables_are_named_not_ignored() -> None:
    env = {"PARCEL_KAFKA_BOOTSTRAPP": "x:1", "PARCEL_PARTITIONS": "3", "PARCEL_BROKER_BIN": "b",
           "OTHER": "1"}  # fmt: skip
    assert Settings.unknown_variables(env) == ["PARCEL_KAFKA_BOOTSTRAPP"]


def test_the_young_generation_follows_the_chunks_between_short_pauses_and_three_full_chunks() -> (
    None
):
    """Small chunks (a few parcels at a low rate) keep the collector's short pauses; large
    ones raise its threshold to about three chunks' worth of objects, never above three
    of the largest chunk."""
    s = Settings().replace(chunk_max_bytes=4 * 1024 * 1024)
    assert s.young_threshold(14_000) == 50_000
    assert s.young_threshold(2 * 1024 * 1024) == 2 * 1024 * 1024 // 24
    assert s.young_threshold() == s.young_threshold(4 * 1024 * 1024) == 4 * 1024 * 1024 // 24
    assert s.young_threshold(64 * 1024 * 1024) == s.young_threshold()  # one record, larger
    assert Settings().replace(chunk_max_bytes=1024).young_threshold() == 50_000


def test_the_dev_stacks_export_lines_are_valid_settings_with_fast_group_joins() -> None:
    from parcel_stream.adapters.devstack import StackInfo

    info = StackInfo("dev-state", 19092, 16379, 1, 2)
    s = Settings.from_env(info.env())
    assert (s.kafka_bootstrap, s.redis_url) == ("127.0.0.1:19092", "redis://127.0.0.1:16379/0")
    assert s.broker_rebalance_timeout_s == 4.0 < Settings().broker_rebalance_timeout_s
