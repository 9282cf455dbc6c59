"""The stack's process worker: Prefect's ``process`` worker whose crash report of one exit is never a second one.

    python -m flows.worker --pool dreampose-local --name worker-1 --limit 1   # what `make serve` starts

When a flow-run process exits non-zero, Prefect 3.9's runner reports the run Crashed, and then the worker reports
the same exit again (``BaseWorker._submit_run_and_capture_errors``), seconds later on a loaded machine. By then
the run may already be scheduled for its retry, or running it: the second report overwrote that retry (a second
retry for one crash) or, on a running retry, released its deployment concurrency lease (its next renewal got
"410 Gone" and the retry died). Here the worker reports a crash only while the run is still in the attempt it
submitted: Running with the run count that attempt gave it, or Pending before it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings

from prefect.workers.process import ProcessWorker

from flows.recovery import crash_is_ours

with warnings.catch_warnings():  # the same "process" type: this class serves process pools in this process
    warnings.simplefilter("ignore", UserWarning)

    class SettledProcessWorker(ProcessWorker):
        """``ProcessWorker`` with an idempotent crash report (see the module docstring)."""

        async def _propose_crashed_state(self, flow_run, message: str, client=None) -> None:
            try:
                current = await (client or self.client).read_flow_run(flow_run.id)
            except Exception:  # unreadable: report as Prefect would
                current = None
            if current is not None:
                state_type = current.state.type.value if current.state else None
                if not crash_is_ours(flow_run.run_count, state_type, current.run_count):
                    self.get_flow_run_logger(flow_run).info(
                        "Not reporting flow run %s as crashed again: it is %s (run %s), already reported or retried",
                        flow_run.id,
                        state_type,
                        current.run_count,
                    )
                    return
            await super()._propose_crashed_state(flow_run, message, client=client)


def main(argv: list[str] | None = None) -> int:
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS
    from prefect.utilities.processutils import setup_signal_handlers_worker

    p = argparse.ArgumentParser(prog="python -m flows.worker", description=__doc__.splitlines()[0])
    p.add_argument("--pool", required=True)
    p.add_argument("--name", default=None)
    p.add_argument("--limit", type=int, default=None)
    a = p.parse_args(argv)
    setup_signal_handlers_worker(os.getpid(), "the process worker", print)
    worker = SettledProcessWorker(
        name=a.name,
        work_pool_name=a.pool,
        limit=a.limit,
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
    )
    try:
        asyncio.run(worker.start(with_healthcheck=False, printer=print))
    except asyncio.CancelledError:
        print(f"Worker {worker.name!r} stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
