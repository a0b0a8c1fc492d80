"""The worker over TLS to the broker and to Redis, with a Redis ACL user and password.

The dev broker's own TLS flags do not work in the build we ship, so stunnel terminates
TLS in front of it, and the broker advertises the stunnel port: every client, the
worker included, can reach it only over TLS. redis-server listens on a TLS port only,
with the default user disabled. The test shows that plaintext and wrong passwords are
refused, then runs a feed through the worker and checks every parcel and the Redis state.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from benchmarks.reliability.harness import (
    Worker,
    account,
    check_reputation,
    collect,
    make_feed,
    pace,
)
from parcel_stream.adapters import devstack
from parcel_stream.adapters.devstack import free_port
from parcel_stream.adapters.security import kafka_client_options
from parcel_stream.settings import Settings
from tests.integration.test_health import wait_for

PASSWORD = "s3cret-Pw-for-tests"


def make_certs(d: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost signed by it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.crt", "-subj", "/CN=parcel-stream-test-ca", "-days", "2")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=localhost")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return d / "ca.crt"


@dataclass
class SecureStack:
    bootstrap: str  # the TLS port
    redis_port: int
    ca: Path


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115


def until(check: object, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what} did not come up within {timeout_s:.0f}s")


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureStack]:
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None:
        pytest.fail("stunnel not found: `make test-deps` installs Debian's stunnel4")
    ca = make_certs(tmp_path)
    plain, tls, rport = free_port(), free_port(), free_port()
    (tmp_path / "stunnel.conf").write_text(
        f"foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\n"
        f"connect = 127.0.0.1:{plain}\ncert = {tmp_path / 'server.crt'}\n"
        f"key = {tmp_path / 'server.key'}\n"
    )
    procs = [
        spawn([devstack.broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{plain}",
               "--advertised-listener-url", f"tcp://127.0.0.1:{tls}"], tmp_path / "broker.log"),
        spawn([stunnel, str(tmp_path / "stunnel.conf")], tmp_path / "stunnel.log"),
        spawn([devstack.redis_binary(), "--port", "0", "--tls-port", str(rport),
               "--bind", "127.0.0.1", "--tls-cert-file", str(tmp_path / "server.crt"),
               "--tls-key-file", str(tmp_path / "server.key"),
               "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
               "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
               "--user", "parcel", "on", f">{PASSWORD}", "~*", "&*", "+@all",
               "--user", "default", "off"], tmp_path / "redis.log"),
    ]  # fmt: skip
    try:
        yield SecureStack(f"127.0.0.1:{tls}", rport, ca)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_worker_over_tls_to_broker_and_redis_with_acl_password(
    settings: Settings, secure: SecureStack, tmp_path: Path
) -> None:
    s = settings.replace(
        kafka_bootstrap=secure.bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=str(secure.ca),
        redis_url=f"rediss://127.0.0.1:{secure.redis_port}/0",
        redis_username="parcel",
        redis_password=PASSWORD,
        redis_ssl_ca_file=str(secure.ca),
    )
    assert PASSWORD not in repr(s)

    def tls_admin() -> bool:
        admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=3000,
                                 **kafka_client_options(s))  # fmt: skip
        admin.list_topics()
        admin.close()
        return True

    until(tls_admin, "broker behind stunnel")
    devstack.create_topics(s.kafka_bootstrap, s, **kafka_client_options(s))

    # plaintext to the TLS listener gets nowhere
    with pytest.raises(KafkaError):
        KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=3000,
                         api_version_auto_timeout_ms=3000).list_topics()  # fmt: skip
    # Redis: TLS and the ACL user work; plaintext, no password or a wrong one do not
    good = redis.Redis(host="127.0.0.1", port=secure.redis_port, ssl=True,
                       ssl_ca_certs=str(secure.ca), username="parcel", password=PASSWORD)  # fmt: skip
    assert good.ping()
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis(host="127.0.0.1", port=secure.redis_port, socket_timeout=3).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=secure.redis_port, ssl=True,
                    ssl_ca_certs=str(secure.ca), username="parcel", password="wrong").ping()  # fmt: skip
    with pytest.raises(redis.exceptions.AuthenticationError):  # the default user is off
        redis.Redis(host="127.0.0.1", port=secure.redis_port, ssl=True,
                    ssl_ca_certs=str(secure.ca)).ping()  # fmt: skip

    feed = make_feed(4000, seed=41, bad_every=400, shippers=500)
    worker = Worker(s, tmp_path / "worker.log")
    worker.start()
    try:
        wait_for(worker, "/readyz", 200)
        pace(s, feed, 4000).join()
        out = collect(s, feed, timeout_s=120, progress=False, workers=(worker,))
        acc = account(feed, out)
        assert acc.missing == 0 and acc.rejected == feed.bad and acc.unexpected == 0
        shippers, mismatches = check_reputation(s, feed, out)
        assert shippers > 100 and mismatches == 0
        assert good.dbsize() > 0  # the state is in the TLS Redis
    finally:
        worker.stop()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert PASSWORD not in log
