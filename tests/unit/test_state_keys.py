"""The documented key table is the declared one."""

from pathlib import Path

from parcel_stream.state import STATE_KEYS, declared, key_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "state.md"


def test_the_key_table_in_the_docs_is_generated_from_the_declaration() -> None:
    assert key_table() in DOC.read_text(), (
        "docs/state.md's key table differs from parcel_stream/state.py: paste the output "
        "of `python -m parcel_stream.state`"
    )


def test_keys_are_recognised_by_their_declared_kind() -> None:
    examples = {
        "ps:shipper:SHP1": "ps:shipper:{id}",
        "ps:seller:L1@shop": "ps:seller:{seller id}@{marketplace}",
        "ps:addr:0a1b:shippers": "ps:addr:{address key}:shippers",
        "ps:addr:0a1b:violations": "ps:addr:{address key}:violations",
        "ps:learner": "ps:learner",
        "ps:learner:history": "ps:learner:history",
        "ps:wm:manifests:3": "ps:wm:{topic}:{partition}",
    }
    for key, pattern in examples.items():
        kind = declared(key, "ps")
        assert kind is not None and kind.pattern() == pattern, key
    assert declared("ps:nothing:1", "ps") is None and declared("other:shipper:1", "ps") is None
    assert len({k.pattern() for k in STATE_KEYS}) == len(STATE_KEYS)


def test_state_fields_are_written_as_text_that_reads_back_exactly() -> None:
    import math
    import random

    from parcel_stream.adapters.redis_store import num_text

    assert [num_text(v) for v in (58.0, 0.0, 1.7e12, -3.0)] == ["58", "0", "1700000000000", "-3"]
    rng = random.Random(3)
    for v in [rng.uniform(-1e6, 1e6) for _ in range(2000)] + [0.1, 1e-300, 2.5e15 + 0.5]:
        assert float(num_text(v)) == v
        assert ("." in num_text(v)) or ("e" in num_text(v))  # never read as an integer
    assert math.isinf(float(num_text(math.inf))) and math.isnan(float(num_text(math.nan)))
