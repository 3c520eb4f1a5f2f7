"""Server-wide limits, each named by the setting that sets it so an error can say which to raise."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidRequest, LimitExceeded


def setting_name(field: str) -> str:
    return f"--{field.replace('_', '-')} (TORCHWIRE_{field.upper()})"


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 64 * 1024 * 1024
    max_tensor_elements: int = 2**26
    max_request_rows: int = 0  # 0: only the model's max_batch_size

    def check_elements(self, tensor: str, count: int) -> None:
        if count > self.max_tensor_elements:
            raise InvalidRequest(
                f"input '{tensor}' has {count} elements, over the limit of {self.max_tensor_elements} "
                f"set by {setting_name('max_tensor_elements')}"
            )

    def check_rows(self, tensor: str, rows: int) -> None:
        if self.max_request_rows and rows > self.max_request_rows:
            raise InvalidRequest(
                f"input '{tensor}' has {rows} rows, over the limit of {self.max_request_rows} "
                f"set by {setting_name('max_request_rows')}"
            )

    def check_response(self, size: int) -> None:
        if size > self.max_message_bytes:
            raise LimitExceeded(
                f"the response would be {size} bytes, over the limit of {self.max_message_bytes} "
                f"set by {setting_name('max_message_bytes')}"
            )


class Gate:
    """Counts work in progress against a limit (0: none); refusing is the caller's job."""

    def __init__(self, limit: int, field: str, what: str) -> None:
        self.limit = limit
        self.active = 0
        self._field = field
        self._what = what

    def enter(self) -> None:
        if self.limit and self.active >= self.limit:
            raise LimitExceeded(
                f"{self.active} {self._what} in progress, the limit set by {setting_name(self._field)}"
            )
        self.active += 1

    def exit(self) -> None:
        self.active -= 1
