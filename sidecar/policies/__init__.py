"""Policies applied to every record between parse and batch.

``PolicyStage`` (``stage.py``) samples (``sampling.py``), redacts
(``redaction.py``) and truncates (``limits.py``); the redaction and limit
functions work on raw JSON bytes, independent of the record models.
"""

from sidecar.policies.stage import SAMPLED_OUT, Policies, PolicyStage, SampledOut
from sidecar.snapshots import PolicyStats

__all__ = ["SAMPLED_OUT", "Policies", "PolicyStage", "PolicyStats", "SampledOut"]
