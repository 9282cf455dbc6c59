"""The outcome of one metric: a value, or ``unavailable`` with the reason (never a made-up number)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricResult:
    """``value`` is set exactly when ``reason`` is not; build with :meth:`ok` or :meth:`unavailable`."""

    value: float | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.reason is None):
            raise ValueError("MetricResult needs exactly one of value or reason")

    @classmethod
    def ok(cls, value: float) -> MetricResult:
        return cls(value=float(value))

    @classmethod
    def unavailable(cls, reason: str) -> MetricResult:
        return cls(reason=reason)

    @property
    def available(self) -> bool:
        return self.value is not None

    def to_json(self) -> Any:
        """A finite number, or ``{"status": "unavailable", "reason": ...}``; inf/nan become strings
        because JSON (and so ``dvc metrics show``) has no representation for them."""
        if self.value is None:
            return {"status": "unavailable", "reason": self.reason}
        if not math.isfinite(self.value):
            return str(self.value)
        return self.value

    def __str__(self) -> str:
        return f"{self.value:.4f}" if self.value is not None else f"unavailable ({self.reason})"
