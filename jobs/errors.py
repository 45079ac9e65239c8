"""Errors of the job domain. The API turns each into a problem+json response by its class and `code`."""

from __future__ import annotations


class DomainError(Exception):
    """Base class; `code` is the stable machine code clients see, `message` the human text."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, loc: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.loc = loc  # the request field at fault, when there is one


class NotFound(DomainError):
    code = "not_found"


class InvalidState(DomainError):
    """The resource is in a state that does not allow the operation (409)."""

    code = "invalid_state"


class InUse(DomainError):
    """Another active job depends on the resource (409)."""

    code = "in_use"


class LimitExceeded(DomainError):
    """An owner's quota is exhausted (429); `retry_after` seconds is a fair wait."""

    code = "limit_exceeded"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 30):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class InvalidInput(DomainError):
    """A submitted document is unacceptable (422); `errors` name the fields."""

    code = "invalid_spec"

    def __init__(self, message: str, *, code: str | None = None, errors: list[dict[str, str]] | None = None):
        super().__init__(message, code=code)
        self.errors = errors or []


class FenceLost(RuntimeError):
    """Another attempt owns the job now (or it ended): this attempt must stop writing at once."""
