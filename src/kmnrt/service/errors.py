"""Client-facing service errors: one exception type that the app turns into ``{"error": {"code", "message"}}``."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses, with its HTTP status, a stable machine-readable code and a message that says
    what to do. ``headers`` (e.g. Retry-After) go into the response."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_input(message: str, code: str = "invalid_input") -> ServiceError:
    return ServiceError(400, code, message)


def validation_problems(errors: list[dict]) -> str:
    """Pydantic's errors as one line, ``field.sub: message; ...``; an error of the whole text (invalid JSON) has no
    location, so it reads as its message alone."""
    lines = (f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg')}{_hint(error)}"
             for error in errors)
    return "; ".join(line.removeprefix(": ") for line in lines)


def _hint(error: dict) -> str:
    loc = error.get("loc", ())
    if error.get("type") == "string_type" and len(loc) == 2 and loc[0] == "body":  # a text form field sent as a file
        field = loc[1]
        return f" (send {field} as a text field, not a file: curl -F '{field}=<file.json', not -F {field}=@file.json)"
    return ""
