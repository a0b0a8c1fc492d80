"""The worker compiles (or loads) every compiled function of the batch step before its
first batch, the learned model's too when it scores (each case in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from parcel_stream import risk, risk_keys, sequence
from parcel_stream.adapters import risk_replica
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from parcel_stream.step import warm_up_scoring

settings = Settings().replace(risk_model=sys.argv[1])
warm_up_scoring(default_ruleset(settings), settings.risk_config())
step = [sequence._sequence_kernel]
model = [risk_keys._entries, risk_keys._unique_ids, risk_keys.distinct_spans, risk._features,
         risk._norms, risk_replica._put, risk_replica._lookup,
         risk._strongest, risk.track_capacity, risk._sgd]  # held, lanes by capacity, training
print(all(f.signatures for f in step), all(f.signatures for f in model))
"""


def loaded(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", CHECK, mode], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_warm_up_loads_the_step_and_the_model_functions() -> None:
    assert loaded("shadow") == "True True"
    assert loaded("off") == "True False"  # the model's only when it scores
