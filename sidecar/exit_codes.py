"""The process's exit codes, in one place (``span-sidecar --help`` lists them).

Supervisors act on them: Kubernetes and systemd see 3 when a stop's drain
was cut short (the pod's grace period or ``TimeoutStopSec`` is the place to
give it room), and 2 means no restart can help until the config is fixed.
"""

from __future__ import annotations

EXIT_OK = 0
# Anything else that failed: a crash, an unreachable backend, a second stop signal.
EXIT_ERROR = 1
# Bad usage or an invalid configuration.
EXIT_USAGE = 2
# ``run`` stopped, and the drain's timeout (``shutdown.drain_timeout_s``) cut it short.
EXIT_DRAIN_INCOMPLETE = 3

HELP = (f"Exit codes: {EXIT_OK} success, {EXIT_USAGE} bad usage or invalid config, "
        f"{EXIT_DRAIN_INCOMPLETE} `run` stopped with its drain cut short, "
        f"{EXIT_ERROR} anything else.")
