"""What goes wrong in the client, by exit code: usage (2) or the API and the network (1)."""

from __future__ import annotations

from typing import Any


class UsageError(Exception):
    """An argument the client cannot read, or missing configuration: exit code 2, as
    argparse's own errors."""


class ClientError(Exception):
    """The API could not be reached or refused the request: exit code 1."""


class NotSent(ClientError):
    """The connection was refused: the request never reached the API."""


class ApiError(ClientError):
    """A 4xx/5xx answer, with the API's `{"error": {"code", "message", "details"}}`."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, retry_after: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def lines(self) -> list[str]:
        """The message and each detail the API gave, for stderr."""
        lines = [f"{self.message} ({self.status} {self.code})"]
        details = self.details if isinstance(self.details, list) else []
        for item in details:
            if isinstance(item, dict) and "message" in item:
                where = item.get("field") or item.get("loc") or ""
                where = ".".join(map(str, where)) if isinstance(where, list) else str(where)
                lines.append(f"  {where + ': ' if where else ''}{item['message']}")
        if self.retry_after:
            lines.append(f"  retry after {self.retry_after} s")
        return lines
