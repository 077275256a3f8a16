"""`GET /metrics`: the server's Prometheus metrics (prometheus_client, text format 0.0.4).

One registry per server (not the library's global one), so several servers in one process (the
tests, several devices later) never mix their counts. Counters are updated from the event loop
and the step histogram from the device worker thread; prometheus_client is thread-safe.
Interfaces are `ws` (/api/v1/speak), `http` (the OpenAI-compatible API) and `wyoming`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
STEP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter("qwen3tts_requests", "Speech requests accepted, by how they ended: complete, "
                                 "cancelled, disconnected, or the error code (refusals at the door are only "
                                 "in qwen3tts_errors_total)", ["interface", "outcome"], registry=r)
        self._errors = Counter("qwen3tts_errors", "Error replies by code", ["interface", "code"], registry=r)
        self._first_audio = Histogram("qwen3tts_first_audio_seconds", "From request received to its first "
                                      "audio leaving the device worker", ["interface"], buckets=LATENCY_BUCKETS,
                                      registry=r)
        self._audio = Counter("qwen3tts_audio_seconds", "Seconds of audio made", ["interface"], registry=r)
        self._steps = Histogram("qwen3tts_step_seconds", "Device time of one decode step (every active row "
                                "advances one frame)", ["device"], buckets=STEP_BUCKETS, registry=r)
        self._device_gauges = {
            name: Gauge(name, doc, ["device"], registry=r) for name, doc in (
                ("qwen3tts_active_slots", "Device slots generating now"),
                ("qwen3tts_queued_requests", "Requests waiting for a device slot"))}
        self._gauges = {
            name: Gauge(name, doc, registry=r) for name, doc in (
                ("qwen3tts_batch_slots", "Device slots in all, every device"),
                ("qwen3tts_sessions", "Open WebSocket sessions"),
                ("qwen3tts_model_ready", "1 when the model is loaded and serving"),
            )}

    def read_gauges(self, **readers: Callable[[], float]) -> None:
        """Gauges read at scrape time: name (without the `qwen3tts_` prefix) -> reader."""
        for name, fn in readers.items():
            self._gauges[f"qwen3tts_{name}"].set_function(fn)

    def read_device(self, device: str, **readers: Callable[[], float]) -> None:
        """Per-device gauges read at scrape time (`active_slots`, `queued_requests`)."""
        for name, fn in readers.items():
            self._device_gauges[f"qwen3tts_{name}"].labels(device).set_function(fn)

    def request_done(self, interface: str, outcome: str) -> None:
        self._requests.labels(interface, outcome).inc()

    def error(self, interface: str, code: str) -> None:
        self._errors.labels(interface, code).inc()

    def first_audio(self, interface: str, seconds: float) -> None:
        self._first_audio.labels(interface).observe(seconds)

    def audio(self, interface: str, seconds: float) -> None:
        self._audio.labels(interface).inc(seconds)

    def step(self, seconds: float, device: str = "0") -> None:
        self._steps.labels(device).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
