"""The service's metrics in the Prometheus text format (``GET /metrics``), via prometheus-client.

- ``crossalign_requests_total{method, route, status}``: answers given;
- ``crossalign_request_seconds{route}``: how long answers took (a histogram);
- ``crossalign_queue_depth{pool}``: requests waiting for a slot of each work pool;
- ``crossalign_index_items{target}`` and ``crossalign_index_version_info{version}``: what is
  served.

Routes are named by their pattern (``/items/{item_id}``), so an id never makes a new series.
With several worker processes the values of all of them are added up through
prometheus-client's multiprocess mode: ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` for the
workers before they import it.
"""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """The metrics of one service; ``text()`` renders them for a scrape.

    Args:
        index: the :class:`~crossalign.index.search.Index` served (its size and version are reported).
        pools: name -> :class:`~crossalign.serve.work.WorkPool` (their queues are reported).
    """

    def __init__(self, index, pools: dict) -> None:
        self.index, self.pools = index, pools
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("crossalign_requests", "HTTP answers given",
                                ["method", "route", "status"], registry=r)
        self.seconds = Histogram("crossalign_request_seconds", "time to answer a request",
                                 ["route"], buckets=BUCKETS, registry=r)
        self.queue = Gauge("crossalign_queue_depth", "requests waiting for a slot of a work pool",
                           ["pool"], registry=r, multiprocess_mode="livesum")
        self.items = Gauge("crossalign_index_items", "items in the served index", ["target"],
                           registry=r, multiprocess_mode="livemax")
        self.version = Gauge("crossalign_index_version_info", "the index version served (1)",
                             ["version"], registry=r, multiprocess_mode="livemax")
        self._served: str | None = None

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answer, and refresh the gauges."""
        self.requests.labels(method, route, str(status)).inc()
        self.seconds.labels(route).observe(seconds)
        self.refresh()

    def refresh(self) -> None:
        for name, pool in self.pools.items():
            self.queue.labels(name).set(pool.waiting)
        version = self.index.version
        if version != self._served:
            if self._served is not None:
                self.version.labels(self._served).set(0)
            self.version.labels(version).set(1)
            self._served = version
            info = self.index.info
            self.items.labels("images").set(info["n_images"])
            self.items.labels("captions").set(info["n_captions"])

    def text(self) -> bytes:
        """The scrape: this process's metrics, or every worker's in multiprocess mode."""
        self.refresh()
        if not _multiprocess():
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
