"""Instance threads without a server: each warms itself before it takes work."""

from __future__ import annotations

import threading

import pytest

from torchwire.server.runtime.instances import Instances


def test_every_instance_thread_runs_prepare_itself() -> None:
    warmed: list[str] = []
    lock = threading.Lock()

    def prepare() -> None:
        with lock:
            warmed.append(threading.current_thread().name)

    instances: Instances[int, int] = Instances(lambda n: n * 2, count=3, threads=1, name="w", prepare=prepare)
    try:
        instances.wait_prepared()
        assert sorted(warmed) == ["w_0", "w_1", "w_2"]
    finally:
        instances.close()


def test_a_failed_prepare_is_raised_where_the_model_loads() -> None:
    def prepare() -> None:
        raise ValueError(f"cold on {threading.current_thread().name}")

    instances: Instances[int, int] = Instances(lambda n: n, count=2, threads=1, name="c", prepare=prepare)
    try:
        with pytest.raises(ValueError, match=r"^cold on c_[01]$"):
            instances.wait_prepared()
    finally:
        instances.close()
