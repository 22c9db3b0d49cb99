"""The model manager's capacity refusals in the lip-sync server's own terms.

The lip-sync models live in their own pool of the one ModelManager (``lipsync.max_models``,
``lipsync.max_memory_gb``, ``lipsync.capacity_wait_s``): a request for a model that is not loaded
waits there for a slot held by a model in use, then is refused. The refusal names the lip-sync
settings and the model as the spec words its errors (``Model 'X' ...``), and its ``setting`` detail
marks it as the server's answer to this request, which the gRPC door puts in the response
(``success=false``) like the spec's other application errors, not as a transport status.
"""

from __future__ import annotations

from genserve.errors import ErrorCode, GenserveError
from genserve.models.capacity import never_fits

GIB = 1024**3


def refusal(exc: GenserveError, model_id: str) -> GenserveError:
    """The manager's refusal (count or budget, after the pool's wait) as a lip-sync error."""
    waited = f"none became free within {exc.details.get('waited_s', 0.0):g} s (lipsync.capacity_wait_s)"
    if "budget_bytes" in exc.details:
        device, budget = exc.details.get("device", "?"), exc.details["budget_bytes"] / GIB
        setting = "lipsync.max_memory_gb"
        if never_fits(exc):
            why = f"it needs {exc.details['needed_bytes'] / GIB:.2f} GB, more than {setting}={budget:g}"
        else:
            why = f"{setting}={budget:g} on {device} is held by models in use and {waited}"
    else:
        setting = "lipsync.max_models"
        why = f"all {setting}={exc.details['max_loaded']} loaded models are in use and {waited}"
    return GenserveError(
        ErrorCode.RESOURCE_EXHAUSTED,
        f"Model '{model_id}' cannot be loaded: {why}",
        field="model_id",
        setting=setting,
    )
