"""Durability helpers of the daemon: the client's, which needs them too.

They live in ``sidecar.client`` so that the client distribution, which ships
``sidecar/client`` alone, imports nothing outside it.
"""

from sidecar.client.fsutil import fsync_dir

__all__ = ["fsync_dir"]
