"""Prometheus metrics of one process role, read when scraped (``GET /metrics``).

Nothing here is updated on a hot path: a role keeps the plain counters it keeps anyway
(heartbeats received and dropped, requests served, rejections), and ``RoleCollector`` turns them
into metric families at scrape time through a function the role gives it. Each service has a
registry of its own, so several services in one process (``localcontroller.many``) never share
or double-count a metric; the ``role`` and ``id`` of each are in ``snooze_info``.

Names follow Prometheus's conventions: ``snooze_`` prefix, ``_total`` for counters, base units
(seconds, bytes), labels of bounded cardinality (a verb, a reason, a status — never a VM id).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "RoleCollector", "counter", "gauge", "info", "new_registry", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

Labels = tuple[str, ...]


def counter(name: str, doc: str, values: Mapping[Labels, float] | float, labels: Labels = ()) -> CounterMetricFamily:
    """A counter family (``name`` without ``_total``) from a plain number or {label values: number}."""
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for key, value in _items(values):
        family.add_metric(list(key), float(value))
    return family


def gauge(name: str, doc: str, values: Mapping[Labels, float] | float, labels: Labels = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for key, value in _items(values):
        family.add_metric(list(key), float(value))
    return family


def info(name: str, doc: str, value: Mapping[str, str]) -> InfoMetricFamily:
    return InfoMetricFamily(name, doc, value=dict(value))


def _items(values: Mapping[Labels, float] | float) -> Iterable[tuple[Labels, float]]:
    if isinstance(values, Mapping):
        return sorted(values.items())
    return [((), float(values))]


class RoleCollector(Collector):
    """Collects what ``families()`` returns at each scrape; a failing read is skipped, never
    fails the scrape (its error is counted in ``snooze_metrics_errors_total``)."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.families = families
        self.errors = 0

    def collect(self) -> Iterable[Metric]:
        try:
            out = list(self.families())
        except Exception:  # a bug in one role's reader must not take /metrics down
            self.errors += 1
            out = []
        out.append(counter("snooze_metrics_errors", "Scrapes whose role metrics could not be read.", self.errors))
        return out

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time only: nothing to describe ahead


def new_registry(families: Callable[[], Iterable[Metric]], *, process: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RoleCollector(families))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
