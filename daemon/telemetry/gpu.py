"""This worker's GPUs, read through NVML (the driver), and their /metrics gauges.

Read-only, and nothing here imports torch or touches CUDA: the worker parent must never hold a CUDA
context. A worker owns the GPUs CUDA_VISIBLE_DEVICES gives it (the systemd unit gives GPU N to worker N),
so only those are reported. No NVML (no driver, no GPU): no GPU series, one debug line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    index: int  # NVML's index, as nvidia-smi shows it
    uuid: str
    memory_used: float | None
    memory_total: float | None
    utilization: float | None


def visible_gpu_indices(spec: str | None, uuids: list[str]) -> list[int]:
    """The NVML indices of the GPUs named by CUDA_VISIBLE_DEVICES (`spec`), given every GPU's UUID in
    NVML order. Unset: all. Like CUDA: entries are indices or (prefixes of) `GPU-…` UUIDs, and the first
    entry that names no GPU ends the list (so "" and "-1" hide every GPU). Indices are NVML's PCI order:
    set CUDA_DEVICE_ORDER=PCI_BUS_ID, or use UUIDs, so CUDA and NVML agree on which GPU is which."""
    if spec is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for entry in (part.strip() for part in spec.split(",")):
        index: int | None = None
        if entry.lstrip("-").isdigit():
            number = int(entry)
            index = number if 0 <= number < len(uuids) else None
        elif entry.lower().startswith("gpu-"):
            matches = [i for i, uuid in enumerate(uuids) if uuid.lower().startswith(entry.lower())]
            index = matches[0] if len(matches) == 1 else None
        if index is None:
            break
        if index not in chosen:
            chosen.append(index)
    return chosen


class GpuProbe:
    """Reads this worker's GPUs through NVML. No NVML (no driver, no GPU): no samples, one debug log."""

    def __init__(self, nvml: Any = None, *, environ: Mapping[str, str] | None = None) -> None:
        self._nvml = nvml
        self._environ = environ if environ is not None else os.environ
        self._handles: list[tuple[int, str, Any]] | None = None  # None: not tried yet
        self._lock = threading.Lock()

    def _open(self) -> list[tuple[int, str, Any]]:
        if self._handles is not None:
            return self._handles
        self._handles = []
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            nvml = self._nvml
            nvml.nvmlInit()
            devices = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in devices]
        except Exception as exc:
            log.debug("no GPU metrics: NVML unavailable (%s)", exc)
            return self._handles
        chosen = visible_gpu_indices(self._environ.get("CUDA_VISIBLE_DEVICES"), uuids)
        self._handles = [(i, uuids[i], devices[i]) for i in chosen]
        log.debug("GPU metrics for NVML device(s) %s", chosen)
        return self._handles

    def sample(self) -> list[GpuSample]:
        with self._lock:  # NVML calls from several scrape threads at once gain nothing
            samples = []
            for index, uuid, handle in self._open():
                used = total = util = None
                try:
                    memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                    used, total = float(memory.used), float(memory.total)
                except Exception as exc:
                    log.debug("GPU %d memory not read: %s", index, exc)
                try:
                    util = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except Exception as exc:
                    log.debug("GPU %d utilization not read: %s", index, exc)
                samples.append(GpuSample(index, uuid, used, total, util))
            return samples

    def close(self) -> None:
        with self._lock:
            if self._handles:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
            self._handles = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector(Collector):
    """The GPU gauges, read from `probe` at each scrape; none at all without NVML."""

    def __init__(self, probe: GpuProbe) -> None:
        self.probe = probe

    def collect(self) -> Iterator[Metric]:
        samples = self.probe.sample()
        if not samples:
            return
        families = {
            "memory_used": GaugeMetricFamily(
                "capture_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu", "uuid"]
            ),
            "memory_total": GaugeMetricFamily(
                "capture_gpu_memory_total_bytes", "GPU memory.", labels=["gpu", "uuid"]
            ),
            "utilization": GaugeMetricFamily(
                "capture_gpu_utilization_percent",
                "GPU busy time over NVML's last sample period, percent.",
                labels=["gpu", "uuid"],
            ),
        }
        for sample in samples:
            for field, family in families.items():
                value = getattr(sample, field)
                if value is not None:
                    family.add_metric([str(sample.index), sample.uuid], value)
        yield from families.values()
