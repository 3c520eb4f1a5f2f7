"""Settings: flags over TORCHWIRE_* variables over defaults, each option declared once, validated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchwire.server import settings as settings_module
from torchwire.server.settings import Settings


def test_flags_win_over_variables_which_win_over_defaults() -> None:
    env = {"TORCHWIRE_PORT": "9000", "TORCHWIRE_HOST": "127.0.0.1", "TORCHWIRE_SHUTDOWN_GRACE": "2.5"}
    settings = settings_module.parse(["--port", "9001"], env)
    assert (settings.port, settings.host, settings.shutdown_grace) == (9001, "127.0.0.1", 2.5)
    assert settings.metrics_port == Settings().metrics_port == 8002


def test_booleans_and_lists_from_flags_and_variables() -> None:
    settings = settings_module.parse(
        ["--no-reflection", "--load-model", "a", "--load-model", "b"], {"TORCHWIRE_TRACE": "true"}
    )
    assert (settings.reflection, settings.trace, settings.load_model) == (False, True, ("a", "b"))
    assert settings_module.parse([], {"TORCHWIRE_LOAD_MODEL": "x,y"}).load_model == ("x", "y")


def test_a_bad_variable_names_itself() -> None:
    with pytest.raises(ValueError, match=r"^TORCHWIRE_PORT='eighty': "):
        settings_module.parse([], {"TORCHWIRE_PORT": "eighty"})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"port": 70000}, "port must be 0..65535, got 70000"),
        ({"readiness": "some"}, "readiness must be one of ('all', 'any'), got 'some'"),
        ({"tls_cert": Path("/nonexistent.pem")}, "tls_cert and tls_key go together"),
        ({"access_log_sample": 2.0}, "access_log_sample must be within 0..1, got 2.0"),
        ({"model_repository": Path("/nonexistent")}, "model_repository /nonexistent is not a folder"),
    ],
)
def test_invalid_values_are_refused_at_construction(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Settings(**values)  # type: ignore[arg-type]
