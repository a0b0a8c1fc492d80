"""Secure connections from settings: Kafka TLS and SASL (for the Faust worker through
aiokafka, and for the tools through kafka-python) and Redis TLS with an ACL user.

Secrets (SASL and Redis passwords) come from ``PARCEL_*`` variables, which a deployment
fills from its secret store (deploy/k8s/secret.yaml); they are never logged.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from parcel_stream.settings import Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


def kafka_ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL, verifying the brokers (None: no TLS)."""
    if not s.kafka_security_protocol.endswith("SSL"):
        return None
    ctx = ssl.create_default_context(cafile=s.kafka_ssl_ca_file or None)
    ctx.check_hostname = s.kafka_ssl_check_hostname == "true"
    if s.kafka_ssl_cert_file:
        ctx.load_cert_chain(s.kafka_ssl_cert_file, s.kafka_ssl_key_file)
    return ctx


def faust_credentials(s: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the worker (None: plaintext)."""
    from faust.auth import SASLCredentials, SSLCredentials

    ctx = kafka_ssl_context(s)
    if s.kafka_security_protocol.startswith("SASL"):
        return SASLCredentials(
            username=s.kafka_sasl_username,
            password=s.kafka_sasl_password,
            mechanism=s.kafka_sasl_mechanism,
            ssl_context=ctx,
        )
    if ctx is not None:
        return SSLCredentials(ctx)
    return None


def kafka_client_options(s: Settings) -> dict[str, Any]:
    """kafka-python options for the tools (produce, record, replay, demo, tests)."""
    opts: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    ctx = kafka_ssl_context(s)
    if ctx is not None:
        opts["ssl_context"] = ctx
    if s.kafka_security_protocol.startswith("SASL"):
        opts.update(
            sasl_mechanism=s.kafka_sasl_mechanism,
            sasl_plain_username=s.kafka_sasl_username,
            sasl_plain_password=s.kafka_sasl_password,
        )
    return opts


def redis_options(s: Settings) -> dict[str, Any]:
    """Extra ``redis.from_url`` options: ACL user and password, TLS files for rediss://."""
    opts: dict[str, Any] = {}
    if s.redis_username:
        opts["username"] = s.redis_username
    if s.redis_password:
        opts["password"] = s.redis_password
    if s.redis_url.startswith("rediss://"):
        opts["ssl_cert_reqs"] = "required"
        if s.redis_ssl_ca_file:
            opts["ssl_ca_certs"] = s.redis_ssl_ca_file
        if s.redis_ssl_cert_file:
            opts["ssl_certfile"] = s.redis_ssl_cert_file
            opts["ssl_keyfile"] = s.redis_ssl_key_file
    return opts
