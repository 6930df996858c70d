"""What a run worker does before its first step; timed from inside it when forked by hubploy's run launcher.

Forked from the launcher's forkserver (`run_worker_load.py` starts one with the launcher's own preload list),
the probe does the worker's load: the run's arguments where `dagster api execute_run` has them, the code
location's `defs()`, the asset job. A forked child's CPU counters start at zero, so its own `getrusage` is
what the run pays; it exits without the interpreter's teardown, as the launcher's workers do.
"""

from __future__ import annotations

import resource
import sys
import time
from multiprocessing.connection import Connection


def hubs_loaded(serialized_args: str | None) -> int:
    """The load of a run worker given these run arguments (a code server's without): hubs in the asset job."""
    sys.argv = ["dagster", "api", "execute_run", serialized_args] if serialized_args else ["dagster", "code-server"]
    from hubploy_dagster.definitions import defs

    job = defs().get_repository_def().get_job("__ASSET_JOB")
    return len({key.path[0] for key in job.asset_layer.asset_graph.get_all_asset_keys()})


def load_like_a_worker(serialized_args: str, report: Connection) -> None:
    started = time.monotonic()
    hubs = hubs_loaded(serialized_args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report.send({"wall": time.monotonic() - started, "cpu": usage.ru_utime + usage.ru_stime, "hubs": hubs})
