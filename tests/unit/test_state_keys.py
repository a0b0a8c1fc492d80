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
