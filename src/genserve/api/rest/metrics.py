"""Prometheus figures for one server: HTTP traffic, engine queues and work, models.

Each app gets its own CollectorRegistry (several servers in one test process must not share
counters). Queue depth, in-flight work and model figures are read from the engine and the model
manager at scrape time, so they can never drift from the truth; service durations arrive through
the engine's observer hook.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from genserve.engine.engine import Engine
from genserve.engine.events import RunRecord
from genserve.models.manager import ModelManager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _CoreCollector(Collector):
    """Reads engine lanes and the model table on each scrape."""

    def __init__(self, engine: Engine, models: ModelManager) -> None:
        self._engine = engine
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        depth = GaugeMetricFamily("genserve_queue_depth", "Requests waiting for a worker", labels=["device"])
        running = GaugeMetricFamily(
            "genserve_inflight_work", "Requests running on a device", labels=["device"]
        )
        capacity = GaugeMetricFamily(
            "genserve_queue_capacity", "Most requests admitted at once (workers + queue)", labels=["device"]
        )
        for load in self._engine.loads():
            depth.add_metric([load.device], load.waiting)
            running.add_metric([load.device], load.running)
            capacity.add_metric([load.device], load.capacity)
        yield from (depth, running, capacity)

        stats = self._models.stats()
        loaded = [s for s in stats if s.loaded]
        yield GaugeMetricFamily("genserve_models_loaded", "Models in memory", value=len(loaded))
        memory = GaugeMetricFamily(
            "genserve_model_memory_bytes", "Memory held by a loaded model", labels=["kind", "name", "device"]
        )
        for s in loaded:
            memory.add_metric([s.kind, s.name, s.device or ""], s.memory_bytes)
        load_seconds = GaugeMetricFamily(
            "genserve_model_load_seconds", "Duration of the model's latest load", labels=["kind", "name"]
        )
        loads = CounterMetricFamily(
            "genserve_model_loads", "Times a model was loaded", labels=["kind", "name"]
        )
        uses = CounterMetricFamily(
            "genserve_model_requests", "Requests that used a model", labels=["kind", "name"]
        )
        inference = CounterMetricFamily(
            "genserve_model_inference_seconds", "Time requests spent using a model", labels=["kind", "name"]
        )
        for s in stats:
            key = [s.kind, s.name]
            load_seconds.add_metric(key, s.load_time_ms / 1000)
            loads.add_metric(key, s.load_count)
            uses.add_metric(key, s.request_count)
            inference.add_metric(key, s.total_inference_ms / 1000)
        yield from (memory, load_seconds, loads, uses, inference)


class ServerMetrics:
    def __init__(self, engine: Engine, models: ModelManager) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "genserve_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "genserve_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._inflight = Gauge("genserve_http_inflight", "HTTP requests being served", registry=self.registry)
        self._service = Histogram(
            "genserve_service_duration_seconds",
            "Engine run time per service (queue wait included), by outcome",
            ["service", "device", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_CoreCollector(engine, models))
        self._engine = engine
        self.requests_started = 0
        engine.observers.append(self.observe_run)

    def close(self) -> None:
        """Stop observing the engine (it may outlive this app)."""
        if self.observe_run in self._engine.observers:
            self._engine.observers.remove(self.observe_run)

    def http_started(self) -> None:
        self._inflight.inc()
        self.requests_started += 1  # for the idle trimmer: any request at all is activity

    def http_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        self._inflight.dec()
        self._requests.labels(method, route, str(status)).inc()
        self._latency.labels(method, route).observe(seconds)

    def observe_run(self, record: RunRecord) -> None:
        self._service.labels(record.service, record.device, record.outcome).observe(record.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
