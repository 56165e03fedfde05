"""Error mapping: every failure becomes {"error": {"code", "message"}} with the right status."""

import json

import pytest
from fastapi.exceptions import RequestValidationError

from service.api.guards import validation_error
from service.errors import ERROR_STATUS, ServiceError, code_for_status, error_response


def test_error_response_shape_and_retry_after():
    response = error_response(ServiceError("overloaded", "busy", retry_after=3))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert json.loads(response.body) == {"error": {"code": "overloaded", "message": "busy"}}


def test_client_errors_are_4xx():
    for code, status in ERROR_STATUS.items():
        server_side = ("overloaded", "model_loading", "load_failed", "store_unavailable")
        if code not in (*server_side, "internal_error"):
            assert 400 <= status < 500, code


def test_unknown_codes_are_a_programming_error():
    with pytest.raises(ValueError, match="unknown error code"):
        ServiceError("teapot", "short and stout")


def test_framework_statuses_get_codes():
    assert code_for_status(404) == "not_found"
    assert code_for_status(418) == "i'm_a_teapot"


def errors_for(*items):
    return RequestValidationError(list(items))


def test_missing_field_is_named():
    error = validation_error(errors_for({"type": "missing", "loc": ("body", "image"), "msg": "x"}))
    assert (error.code, error.status) == ("missing_field", 400)
    assert "'image'" in error.message


def test_bad_top_k_has_its_own_code():
    exc = errors_for({"type": "int_parsing", "loc": ("body", "top_k"), "msg": "not an int"})
    assert validation_error(exc).code == "invalid_top_k"


def test_other_bad_fields():
    exc = errors_for({"type": "value_error", "loc": ("body", "images", 0), "msg": "not a file"})
    error = validation_error(exc)
    assert error.code == "invalid_field" and error.message.startswith("images.0:")
