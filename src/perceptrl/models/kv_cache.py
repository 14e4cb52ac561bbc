"""The key/value cache argument and output field under the name the installed transformers uses.

transformers 5.x first called it ``past_key_values``; later 5.x releases renamed it ``cache`` (the
``forward`` argument and the output field) and warn on every call that still uses the old name
(``FutureWarning: past_key_values is deprecated ... Use cache instead``, removal announced for 5.40).
perceptrl supports ``transformers>=5.0,<6``, so it asks the model which name its ``forward`` takes.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    try:
        parameters = inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):  # no introspectable signature: the long-standing name
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model, cache: Any) -> dict[str, Any]:
    """``{"cache": cache}`` or ``{"past_key_values": cache}``, as ``model.forward`` (a transformers
    model, not a wrapper) names it."""
    return {_cache_argument(type(model)): cache}


def output_cache(output) -> Any:
    """The key/value cache a forward returned (``output.cache``, or ``output.past_key_values``)."""
    if "cache" in getattr(output, "__dataclass_fields__", {}):
        return output.cache
    return output.past_key_values
