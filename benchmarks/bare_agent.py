"""The peer for the end-to-end benchmark: a Faust agent that does nothing per event.

Same Faust configuration as the parcel-stream worker. When it has seen N events it writes
the monotonic-free wall times of its first and N-th event to a JSON file.
"""

from __future__ import annotations

import json
import sys
import time

import faust

from agents.app import make_faust_app, raw_topic
from parcel_stream.settings import Settings


def main() -> None:
    topic_name, expected, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    settings = Settings.from_env()
    app = make_faust_app(settings)
    topic = raw_topic(app, topic_name, settings.partitions)
    state = {"n": 0, "first": 0.0}

    @app.agent(topic)
    async def bare(stream):  # type: ignore[no-untyped-def]
        async for _value in stream:
            if state["n"] == 0:
                state["first"] = time.time()
            state["n"] += 1
            if state["n"] == expected:
                with open(out_path, "w") as f:
                    json.dump({"first": state["first"], "last": time.time(), "n": expected}, f)

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
