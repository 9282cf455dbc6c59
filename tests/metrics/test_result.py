import math

import pytest

from dreampose.metrics.result import MetricResult


def test_value_or_reason():
    assert MetricResult.ok(0.5).to_json() == 0.5
    u = MetricResult.unavailable("no weights at x.pt")
    assert not u.available
    assert u.to_json() == {"status": "unavailable", "reason": "no weights at x.pt"}
    assert str(u) == "unavailable (no weights at x.pt)"
    assert MetricResult.ok(math.inf).to_json() == "inf"
    with pytest.raises(ValueError):
        MetricResult()
    with pytest.raises(ValueError):
        MetricResult(value=1.0, reason="both")
