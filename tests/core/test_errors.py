"""The failure labels the errors carry: one torchwire reason, one Triton reason, no disagreement."""

from __future__ import annotations

from torchwire.server.core.errors import FAILURE_REASONS, TorchwireError
from torchwire.server.observability.triton_metrics import REASONS


def test_errors_sharing_a_reason_share_its_triton_reason() -> None:
    for error in TorchwireError.__subclasses__():
        assert FAILURE_REASONS[error.reason] == error.triton_reason, error.__name__
    assert set(FAILURE_REASONS.values()) <= set(REASONS)
    assert FAILURE_REASONS["timeout"] == "REJECTED"  # Triton's name for a request its queue timed out
    assert FAILURE_REASONS["model_error"] == "BACKEND"
    assert FAILURE_REASONS["cancelled"] == "CANCELED"
