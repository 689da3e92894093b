"""Errors that are the client's fault; each knows the HTTP status it deserves."""


class InputError(Exception):
    """Bad input: a clear 4xx answer, never a 500."""

    status = 400

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}
