"""A real crash mid-write: run one tans call in this process and SIGKILL the process right
after its N-th store write below a key prefix.

    python -m tests.crash '{"call": "ingest"|"retrain", "zoo": URI, "prefix": "data/", "after": 1, ...}'

Exits by SIGKILL when the write happens; with exit 0 if the call ends first.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from tans.zoo_schema.s3store import S3Store
from tans.zoo_schema.store import LocalStore, S3Settings, open_store


def arm(prefix: str, after: int) -> None:
    count = {"n": 0}
    for cls in (LocalStore, S3Store):
        original = cls.write_bytes

        def write(self, key, data, create_only=False, _original=original):
            done = _original(self, key, data, create_only)
            if key.startswith(prefix):
                count["n"] += 1
                if count["n"] >= after:
                    os.kill(os.getpid(), signal.SIGKILL)
            return done

        cls.write_bytes = write


def main() -> None:
    spec = json.loads(sys.argv[1])
    store = open_store(spec["zoo"], S3Settings(endpoint_url=spec.get("endpoint")))
    arm(spec["prefix"], spec["after"])
    if spec["call"] == "ingest":
        from tans.pipeline.datasets.ingest import ingest

        ingest(store, spec["source"], name=spec.get("name"))
    elif spec["call"] == "retrain":
        from tans.pipeline.execution.retrain import run_retrain
        from tans.retriever.train import RetrainSettings

        run_retrain(store, RetrainSettings(steps=5), spec["image_size"], None, None, log=lambda *_: None)
    else:
        raise SystemExit(f"unknown call {spec['call']!r}")


if __name__ == "__main__":
    main()
