"""The host's CPU, memory and disk as /metrics gauges, read with psutil at each scrape."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class HostCollector(Collector):
    """CPU and memory of the host, free and total space of the disks holding `disk_paths`."""

    def __init__(self, disk_paths: Iterable[Path | str] = ()) -> None:
        self.disk_paths = [Path(p) for p in disk_paths]
        psutil.cpu_percent(interval=None)  # primes the counter: the next call is non-blocking and real

    def collect(self) -> Iterator[Metric]:
        try:
            yield GaugeMetricFamily(
                "capture_cpu_percent",
                "Host CPU use since the previous scrape, percent of all cores.",
                value=float(psutil.cpu_percent(interval=None)),
            )
            memory = psutil.virtual_memory()
            yield GaugeMetricFamily(
                "capture_memory_used_bytes",
                "Host memory in use (total - available).",
                value=float(memory.total - memory.available),
            )
            yield GaugeMetricFamily("capture_memory_total_bytes", "Host memory.", value=float(memory.total))
        except Exception as exc:
            log.warning("host metrics not read: %s", exc)
        free = GaugeMetricFamily(
            "capture_disk_free_bytes", "Free space for the worker's folders.", labels=["path"]
        )
        total = GaugeMetricFamily(
            "capture_disk_total_bytes", "Size of the disk holding the folder.", labels=["path"]
        )
        for path in self.disk_paths:
            try:
                usage = psutil.disk_usage(str(_existing(path)))
            except OSError as exc:
                log.debug("disk of %s not read: %s", path, exc)
                continue
            free.add_metric([str(path)], float(usage.free))
            total.add_metric([str(path)], float(usage.total))
        yield free
        yield total


def _existing(path: Path) -> Path:
    """`path`, or its nearest existing parent (the work folder may not exist before the first job)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
