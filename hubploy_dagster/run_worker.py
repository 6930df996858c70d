"""A run worker loads only the hubs its run deploys.

Every run is executed by a fresh process that loads the code location: with the Docker and Kubernetes run
launchers, `dagster api execute_run ARGS` in the run's container. Loading every hub there made each run pay
for all of them (at 300 hubs, seconds of CPU before the first step, for every one of a chart bump's 600
runs). The worker's arguments name the run, and the run names its assets (`<hub>/...`), so the worker builds
the definitions of those hubs only: the same asset job, reconstructed from a narrower definition, which is
all Dagster needs to execute the run's steps.

Anything else (the code server, `dagster dev`'s in-process runs, a run selecting no asset, arguments that
cannot be read) loads every hub, as before.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import zlib
from collections.abc import Sequence

import dagster as dg

RUN_ARGS_CLASSES = ("ExecuteRunArgs", "ResumeRunArgs")


def _serialized_run_args(argv: Sequence[str]) -> str | None:
    """The run arguments of `dagster api execute_run|resume_run`, from the command line or its variables."""
    if len(argv) < 3 or list(argv[1:3]) not in (["api", "execute_run"], ["api", "resume_run"]):
        return None
    rest = list(argv[3:])
    if "--compressed-input-json" in rest:
        compressed = rest[rest.index("--compressed-input-json") + 1]
        return zlib.decompress(base64.b64decode(compressed.encode())).decode()
    if rest:
        return rest[0]
    if compressed := os.environ.get("DAGSTER_COMPRESSED_EXECUTE_RUN_ARGS"):
        return zlib.decompress(base64.b64decode(compressed.encode())).decode()
    return os.environ.get("DAGSTER_EXECUTE_RUN_ARGS")


def hubs_of_this_run(argv: Sequence[str] | None = None) -> set[str] | None:
    """The hubs whose assets the run this process executes selects; None when this is not a run worker."""
    try:
        serialized = _serialized_run_args(sys.argv if argv is None else argv)
        if serialized is None:
            return None
        # Read as JSON: Dagster's class for these arguments is registered only once its CLI module is imported.
        args = json.loads(serialized)
        if args.get("__class__") not in RUN_ARGS_CLASSES:
            return None
        ref = args.get("instance_ref")
        instance = (
            dg.DagsterInstance.from_ref(dg.deserialize_value(json.dumps(ref))) if ref else dg.DagsterInstance.get()
        )
        run = instance.get_run_by_id(args.get("pipeline_run_id") or args["run_id"])
    except Exception as exc:  # whatever goes wrong here, the full load still works: say so, then do it
        # Only the kind of error: its text could quote the instance's configuration (a database URL).
        print(f"hubploy: loading every hub (the run's hubs could not be read: {type(exc).__name__})", file=sys.stderr)
        return None
    if run is None:
        return None
    keys = [*(run.asset_selection or []), *(check.asset_key for check in run.asset_check_selection or [])]
    if not keys:
        return None
    hubs = {key.path[0] for key in keys}
    print(f"hubploy: run {run.run_id} deploys {', '.join(sorted(hubs))}: loading only those hubs", file=sys.stderr)
    return hubs
