"""What the training workflows' configurations share: the solve they ask for, and the check of
their counts."""

from __future__ import annotations

from typing import Any

import symode

__all__ = ["check_positive", "solve_options"]


def solve_options(config: Any) -> dict[str, Any]:
    """``symode.solve``'s ``method`` and ``steps`` for a configuration with ``method``, ``rtol``
    and ``atol``."""
    return {"method": config.method, "steps": symode.AdaptiveSteps(rtol=config.rtol, atol=config.atol)}


def check_positive(config: Any, *names: str) -> None:
    """``ValueError`` unless each of ``config``'s fields ``names`` is a positive int."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
