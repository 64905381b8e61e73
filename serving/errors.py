"""Errors a request gets back, in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations


class RequestError(Exception):
    """A problem with what the client sent (or asked for), with its HTTP status; the message never names a server
    path or shows a stack trace."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict:
        kind = {404: "not_found_error", 413: "request_too_large", 503: "server_error"}.get(self.status,
                                                                                         "invalid_request_error")
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}
