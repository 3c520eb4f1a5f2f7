"""Settings: flags over TORCHWIRE_* variables over defaults, each option declared once, validated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchwire.server import settings as settings_module
from torchwire.server.settings import Settings, default_threads


def test_flags_win_over_variables_which_win_over_defaults() -> None:
    env = {"TORCHWIRE_PORT": "9000", "TORCHWIRE_HOST": "127.0.0.1", "TORCHWIRE_SHUTDOWN_GRACE": "2.5"}
    settings = settings_module.parse(["--port", "9001"], env)
    assert (settings.port, settings.host, settings.shutdown_grace) == (9001, "127.0.0.1", 2.5)
    assert settings.metrics_port == Settings().metrics_port == 8002
    assert settings.http_port == Settings().http_port == 8000  # as Triton's HTTP port


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
        ({"http_port": 70000}, "http_port must be -1..65535, got 70000"),
        ({"access_log_sample": 2.0}, "access_log_sample must be within 0..1, got 2.0"),
        ({"inline_forward_us": -1}, "inline_forward_us must be >= 0, got -1"),
        (
            {"trace_exporter": "otlp"},
            "trace_exporter otlp needs trace on (--trace, TORCHWIRE_TRACE=1): without it no span is "
            "made, so nothing would be exported",
        ),
        ({"model_repository": Path("/nonexistent")}, "model_repository /nonexistent is not a folder"),
    ],
)
def test_invalid_values_are_refused_at_construction(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Settings(**values)  # type: ignore[arg-type]


def test_workers_is_a_whole_number_or_auto() -> None:
    assert Settings(workers="3").worker_count == 3
    assert Settings(workers="auto").worker_count == default_threads()
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="workers must be a whole number >= 1 or auto"):
            Settings(workers=bad)
