"""Every error the API answers, as `{"error": {"code": ..., "message": ...}}` with its status."""

from __future__ import annotations

from http import HTTPStatus

from starlette.responses import JSONResponse

# code -> HTTP status. The codes are part of the API: clients and the
# `bento_fleet_rejected_inputs_total` metric both key on them.
ERROR_STATUS: dict[str, int] = {
    "empty_body": 400,
    "missing_field": 400,
    "invalid_field": 400,
    "invalid_top_k": 400,
    "not_an_image": 400,
    "truncated_image": 400,
    "too_many_images": 400,
    "unsupported_format": 415,
    "payload_too_large": 413,
    "too_many_pixels": 413,
    "unauthorized": 401,  # with WWW-Authenticate: no API key sent
    "forbidden": 403,  # a key that is not one of auth.api_keys, or none configured
    "not_found": 404,
    "unknown_request": 404,
    "invalid_label": 422,
    "invalid_index": 422,
    "method_not_allowed": 405,
    "overloaded": 503,
    "model_loading": 503,  # with Retry-After: the models are loading and warming up
    "load_failed": 503,  # without: a serving model or the prediction log failed to start
    "store_unavailable": 503,
    "internal_error": 500,
}


class ServiceError(Exception):
    """An error meant for the client; `code` must be a key of ERROR_STATUS."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None):
        if code not in ERROR_STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def about_image(self, index: int) -> ServiceError:
        """This error, its message naming the image of a several-image request it is about (by
        its field name, images[i])."""
        self.message = f"images[{index}]: {self.message}"
        return self

    @property
    def headers(self) -> dict[str, str] | None:
        if self.retry_after:
            return {"Retry-After": str(self.retry_after)}
        if self.code == "unauthorized":
            return {"WWW-Authenticate": 'Bearer realm="bento-fleet"'}
        return None

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.code]


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(error.code, error.message), error.status, headers=error.headers)


def code_for_status(status: int) -> str:
    """A code for statuses raised by the framework itself (unknown route, wrong method)."""
    for code, known in ERROR_STATUS.items():
        if known == status:
            return code
    return HTTPStatus(status).phrase.lower().replace(" ", "_")
