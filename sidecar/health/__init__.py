"""Self-monitoring: latency windows, the health verdict and span, probes, metrics, systemd.

The app builds each piece once and passes it where it is needed (no
singletons); see each module's docstring for why it is shaped as it is.
The probe server (``sidecar.health.http``, aiohttp) is imported only where it
runs: commands and a daemon without HTTP do not load aiohttp (~120 ms).
"""

from sidecar.health.latency import LatencySnapshot, LatencyWindow
from sidecar.health.metrics import CONTENT_TYPE, Metrics
from sidecar.health.monitor import HealthStatus, SelfMonitor, Status, rss_bytes
from sidecar.health.notify import Notifier
from sidecar.health.report import HealthReporter

__all__ = [
    "CONTENT_TYPE",
    "HealthReporter",
    "HealthStatus",
    "LatencySnapshot",
    "LatencyWindow",
    "Metrics",
    "Notifier",
    "SelfMonitor",
    "Status",
    "rss_bytes",
]
