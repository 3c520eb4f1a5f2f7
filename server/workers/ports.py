"""The shared port: the supervisor holds it so workers (and only they) can join it."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

from ..startup import StartupError, cannot_bind


@contextlib.contextmanager
def reserved_port(host: str, port: int, taken: Callable[[int, str], StartupError]) -> Iterator[int]:
    """Hold `host:port` (0: a free one) for SO_REUSEPORT listeners; yields the port. A taken port
    raises `taken(port, why)`.

    First the check a lone server makes (a SO_REUSEPORT bind would quietly share a port another group
    of workers listens on). Then, for as long as the server runs, a SO_REUSEPORT socket bound but not
    listening: it takes no connections, and keeps the port for the workers, replacements included.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    if port == 0:  # a port no one holds, not one a SO_REUSEPORT bind could share
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
            port = int(probe.getsockname()[1])
    elif (why := cannot_bind(host, port)) is not None:
        raise taken(port, why)
    with socket.socket(family, kind, proto) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((address[0], port, *address[2:]))
        yield port
