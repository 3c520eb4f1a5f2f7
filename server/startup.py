"""Why a server cannot start, in one line that says what to change: shared by a lone server (App)
and the supervisor of `--workers N`, which holds the port before any worker (and torch) starts."""

from __future__ import annotations

import socket


class StartupError(Exception):
    """The server cannot start (a port it must listen on is taken); the message says what to change."""


def cannot_bind(host: str, port: int) -> str | None:
    """Why a TCP listener cannot bind host:port now ("Address already in use"), or None if it can."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's listener does
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def grpc_port_taken(address: str, why: str) -> StartupError:
    return StartupError(
        f"cannot listen on {address} for gRPC ({why}): choose another port with --port or "
        "TORCHWIRE_PORT (0 picks a free one)"
    )


def metrics_port_taken(host: str, port: int, why: str | None) -> StartupError:
    return StartupError(
        f"cannot listen on {host}:{port} for metrics ({why}): choose another port with --metrics-port "
        "or TORCHWIRE_METRICS_PORT (0 turns metrics off, -1 picks a free one)"
    )


def http_port_taken(host: str, port: int, why: str | None) -> StartupError:
    return StartupError(
        f"cannot listen on {host}:{port} for HTTP ({why}): choose another port with --http-port or "
        "TORCHWIRE_HTTP_PORT (0 turns HTTP off, -1 picks a free one)"
    )
