"""The producer guide's example programs (docs/examples/) against the dev broker and a
live worker: kafka-python and confluent-kafka (plain, each codec, transactional) produce,
and the reader prints a decision for every parcel sent. The Python blocks the guide
quotes are kept verbatim in the example files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from parcel_stream.adapters.kafka_io import make_producer
from parcel_stream.settings import Settings
from tests.integration.conftest import run_worker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
GUIDE = ROOT / "docs" / "producers.md"


def example(name: str, *args: str, timeout_s: float = 180) -> list[str]:
    """Run an example program; its stdout lines (a failure shows its stderr)."""
    p = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 0, f"{name} {args}: exit {p.returncode}\n{p.stderr[-3000:]}"
    return p.stdout.splitlines()


def sent_ids(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines if line.startswith("sent ")]


def test_guide_examples_produce_and_read_back(settings: Settings, tmp_path: Path) -> None:
    s = settings
    boot, topic = s.kafka_bootstrap, s.topic_manifests
    runs = [
        ("produce_kafka_python.py", "--prefix", "KP"),
        ("produce_confluent.py", "--prefix", "CF"),
        *[
            ("produce_confluent.py", "--prefix", f"C{c[:2].upper()}", "--compression", c)
            for c in ("gzip", "snappy", "lz4")
        ],  # fmt: skip
        ("produce_confluent.py", "--prefix", "TX", "--transactional"),
    ]
    with run_worker(s, tmp_path) as worker:
        ids: list[str] = []
        for name, *args in runs:
            got = sent_ids(example(name, boot, "--topic", topic, *args))
            assert len(got) == 8, (name, args, got)
            ids += got
        # one malformed manifest, to see the reader print a rejection
        bad = make_producer(boot)
        bad.send(topic, key=b"SHP-BAD", value=b'{"parcel_id": "BAD-1", "carrier": ')
        bad.flush()
        bad.close()
        out = example(
            "read_decisions.py", boot,
            "--decisions", s.topic_decisions, "--holds", s.topic_holds,
            "--rejects", s.topic_rejects, "--expect", str(len(ids)), "--timeout", "150",
        )  # fmt: skip
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    decided = {line.split()[1]: line for line in out if line.startswith("decision ")}
    assert set(ids) <= set(decided), sorted(set(ids) - set(decided))
    assert all(re.match(r"decision \S+ (release|review|hold) score \d", decided[i]) for i in ids)
    held = {line.split()[1] for line in out if line.startswith("hold ")}
    assert held == {i for i in ids if decided[i].split()[2] == "hold"}
    # the reader stops once every parcel is decided: the rejection may come after that
    # point in its poll, so it is read again only if it was not printed
    if not any(line.startswith("reject ") for line in out):
        out = example(
            "read_decisions.py", boot,
            "--decisions", s.topic_decisions, "--holds", s.topic_holds,
            "--rejects", s.topic_rejects, "--timeout", "5",
        )  # fmt: skip
    assert any(line.startswith("reject invalid_json at $") for line in out), out[-5:]


@pytest.mark.parametrize("name", ["produce_kafka_python.py", "produce_confluent.py",
                                  "read_decisions.py"])  # fmt: skip
def test_guide_quotes_the_examples_verbatim(name: str) -> None:
    """Every marked region of an example program appears in the guide unchanged."""
    text = (EXAMPLES / name).read_text()
    guide = GUIDE.read_text()
    regions = re.findall(r"# --8<-- \[start:(\w+)\]\n(.*?)\n[ ]*# --8<-- \[end:\1\]", text, re.S)
    assert regions, name
    for region, body in regions:
        lines = body.splitlines()
        indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
        snippet = "\n".join(x[indent:] for x in lines)
        assert snippet in guide, f"{name} [{region}] is not quoted as is in docs/producers.md"
