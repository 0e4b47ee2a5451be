"""Prometheus metrics (DESIGN §9), served on the admin port at `/metrics`.

One `CollectorRegistry` per runtime (no process-global registry), so two gateways in one
process, as in the tests, never share counters. Label values are bounded: tool names come
from the specs (unknown routes are `-`), actions and codes from enums.

Under `toolgate serve --workers N` the supervisor gives every worker one directory in
`PROMETHEUS_MULTIPROC_DIR` (`gateway.workers`): prometheus_client, which reads the variable
when it is imported, then keeps every value in a memory-mapped file of that directory, and
`/metrics` (served by worker 1) adds up the files of every worker. Without the variable,
values live in this process and the registry alone is exposed.

Beside the gateway's own series, `/metrics` has `toolgate_build_info{version,python,aiohttp,
uvloop} 1` and prometheus_client's process and Python collectors: `process_*` (CPU, memory,
open files, start time) and `python_info`, `python_gc_*`. In multiprocess mode, where
prometheus_client offers none of these, they are read when scraped (`RunProcesses`):
`process_*` of every process of the run with a `worker` label (`1` … `N`, and `supervisor`),
read from `/proc/<pid>` — each process leaves its pid in the run's directory
(`register_process`) — and `python_gc_*` of the worker that serves `/metrics`, labelled the
same way.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterable, Iterator
from importlib.metadata import version
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.core.stage import Stage

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DECISION_RECORD = "decision_record"   # the `toolgate_stage_seconds` of the record's write
# Sub-millisecond to multi-second: gateway overhead is ~1 ms, upstreams take longer.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0)
# One pipeline stage takes microseconds; a store or policy stage under load, milliseconds.
STAGE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                 0.01, 0.025, 0.1, 1.0)


class Metrics:
    def __init__(self) -> None:
        # Multiprocess only if prometheus_client chose it at import (values in files): a
        # variable set later would expose files this process never writes.
        shared = prometheus_values.ValueClass is not prometheus_values.MutexValue
        self.multiproc_dir = os.environ.get(MULTIPROC_ENV) if shared else None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(BuildInfo())
        if self.multiproc_dir is None:   # else read when scraped, for every process
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.calls = Counter("toolgate_calls", "Tool calls by tool, action and error code",
                             ["tool", "action", "code"], registry=r)
        # The autonomy ramp's share: calls the policy let run although they were over a
        # limit (a reason `autonomy_ramp:`), against `toolgate_calls_total` of the tool.
        self.ramped = Counter("toolgate_ramped_calls",
                              "Calls run without approval by the autonomy ramp",
                              ["tool"], registry=self.registry)
        self.schema = Counter("toolgate_schema_checks",
                              "Argument validations by result (tool-call validity rate)",
                              ["tool", "result"], registry=r)
        self.upstream = Counter("toolgate_upstream_responses",
                                "Upstream responses by status class (tool-call success rate)",
                                ["tool", "status_class"], registry=r)
        self.output_schema = Counter("toolgate_output_schema_checks",
                                     "Output-schema post-conditions by result",
                                     ["tool", "result"], registry=r)
        self.fallback = Histogram("toolgate_time_to_safe_fallback_seconds",
                                  "Time from request to a deny or hold answer",
                                  ["action"], buckets=BUCKETS, registry=r)
        self.overhead = Histogram("toolgate_gateway_overhead_seconds",
                                  "Time spent in the gateway, upstream time excluded",
                                  ["tool"], buckets=BUCKETS, registry=r)
        self.upstream_latency = Histogram("toolgate_upstream_latency_seconds",
                                          "Upstream response time", ["tool"],
                                          buckets=BUCKETS, registry=r)
        self.webhook_failures = Counter("toolgate_webhook_failures",
                                        "Approval notifications not delivered", ["reason"],
                                        registry=r)
        self.approval_wait = Histogram("toolgate_approval_wait_seconds",
                                       "Time from a call being held to its decision",
                                       ["outcome"], buckets=(1, 10, 60, 300, 900, 3600, 14400,
                                                             86400), registry=r)
        # How each approved call ended (`gateway.approvals.executor`).
        self.approved_calls = Counter(
            "toolgate_approved_calls", "Approved calls by how they ended: executed, not sent "
            "or failed", ["tool", "status", "code"], registry=r)
        self.connections_turned_away = Counter(
            "toolgate_connections_turned_away", "Connections answered 503 at the port's cap",
            ["port"], registry=r)
        self.send_timeouts = Counter(
            "toolgate_send_timeouts", "Connections aborted: the client did not take a "
            "response within limits.send_timeout_ms", ["port"], registry=r)
        self.slow_heads = Counter(
            "toolgate_slow_request_heads", "Connections closed for a request head that took "
            "longer than limits.header_timeout_ms", ["port"], registry=r)
        self.policy_latency = Histogram("toolgate_policy_latency_seconds",
                                        "Policy decision time", buckets=BUCKETS, registry=r)
        # Where a call's time goes, stage by stage (the pipeline's, and the decision
        # record's write): what the benchmark prints, and what moves when the code does.
        self.stage = Histogram("toolgate_stage_seconds", "Time spent in each pipeline stage",
                               ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.stages = {name: self.stage.labels(name)   # resolved once: no lookup per call
                       for name in (*(str(s) for s in Stage), DECISION_RECORD)}

    def exposition(self) -> bytes:
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        # Every worker's values, summed from their files (a fresh registry each time: the
        # collector reads the directory when collected).
        every = CollectorRegistry()
        # prometheus_client leaves this constructor unannotated.
        MultiProcessCollector(every, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
        every.register(BuildInfo())
        every.register(RunProcesses(Path(self.multiproc_dir)))
        PlatformCollector(registry=every)
        return generate_latest(every)


class BuildInfo(Collector):
    """`toolgate_build_info{version,python,aiohttp,uvloop} 1`: what this gateway runs."""

    def __init__(self) -> None:
        self._labels = [__version__, platform.python_version(), version("aiohttp"),
                        version("uvloop")]

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily("toolgate_build_info", "The gateway's version and the "
                                 "versions it runs on", labels=["version", "python",
                                                                "aiohttp", "uvloop"])
        info.add_metric(self._labels, 1)
        return [info]


PID_FILE = re.compile(r"(worker-[0-9]{1,4}|supervisor)\.pid")


def register_process(directory: str | Path | None, name: str) -> None:
    """Leave this process's pid in the run's metrics directory as `<name>.pid` (`worker-3`,
    `supervisor`), for `RunProcesses` to read its `/proc` entry. Nothing without one."""
    if directory is None:
        return
    path = Path(directory) / f"{name}.pid"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(str(os.getpid()), encoding="ascii")
    temporary.replace(path)   # whole or absent: a reader never sees half a pid


class RunProcesses(Collector):
    """`process_*` of every process of a `--workers N` run, labelled `worker` (`1` … `N`,
    `supervisor`), from `/proc/<pid>` when scraped; and `python_gc_*` of this process, with
    its own label. A process that is gone (or a platform without `/proc`) adds nothing."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def _pids(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        for path in self._directory.glob("*.pid"):
            if PID_FILE.fullmatch(path.name) is None:
                continue
            try:
                pid = int(path.read_text(encoding="ascii"))
            except (OSError, ValueError):
                continue
            pids[path.stem.removeprefix("worker-")] = pid
        return pids

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        pids = self._pids()
        for label, pid in sorted(pids.items()):
            _relabel(families, ProcessCollector(pid=lambda pid=pid: pid,  # type: ignore[misc]
                                                registry=None).collect(), label)
            if pid == os.getpid():
                _relabel(families, GCCollector(registry=CollectorRegistry()).collect(), label)
        yield from families.values()


def _relabel(families: dict[str, Metric], metrics: Iterable[Metric], worker: str) -> None:
    """Add each metric's samples to `families` with the label `worker`."""
    for metric in metrics:
        family = families.setdefault(metric.name, Metric(metric.name, metric.documentation,
                                                         metric.type))
        for sample in metric.samples:
            family.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value)
