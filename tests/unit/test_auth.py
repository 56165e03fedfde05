"""API keys for the endpoints that change state: who is let in, and the error each refusal gets."""

import json

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from service import cli
from service.api.auth import caller, key_digest, new_key
from service.errors import ServiceError, error_response
from service.settings import ApiKey, AuthSettings

LABELER, AUDITOR = new_key(), new_key()
KEYS = [
    ApiKey(name="labeler", sha256=key_digest(LABELER)),
    ApiKey(name="auditor", sha256=key_digest(AUDITOR)),
]


def request(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    return Request({"type": "http", "method": "POST", "path": "/feedback", "headers": headers})


def refusal(authorization: str | None, keys=KEYS) -> ServiceError:
    with pytest.raises(ServiceError) as refused:
        caller(request(authorization), keys, "POST /feedback")
    return refused.value


def test_each_key_names_its_holder():
    assert caller(request(f"Bearer {LABELER}"), KEYS, "POST /feedback") == "labeler"
    assert caller(request(f"bearer  {AUDITOR} "), KEYS, "POST /feedback") == "auditor"


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer   ", f"Basic {LABELER}"])
def test_no_key_is_401_with_the_scheme_to_use(authorization):
    error = refusal(authorization)
    assert error.status == 401 and error.code == "unauthorized"
    assert "Authorization: Bearer" in error.message
    response = error_response(error)
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "presented", [LABELER[:-1], LABELER + "x", "bfk_guess", key_digest(LABELER)]
)
def test_a_wrong_key_is_403(presented):
    error = refusal(f"Bearer {presented}")
    assert error.status == 403 and error.code == "forbidden"
    assert presented not in error.message  # never echoed
    assert "www-authenticate" not in error_response(error).headers


def test_no_key_configured_refuses_everyone_naming_the_setting():
    error = refusal(f"Bearer {LABELER}", keys=[])
    assert error.status == 403 and "auth.api_keys" in error.message


def test_keys_are_random_and_long():
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) >= 40 for k in keys)


@pytest.mark.parametrize(
    "api_keys",
    [
        [{"name": "a", "sha256": "abc"}],  # not a digest
        [{"name": "a", "sha256": key_digest(LABELER).upper()}],  # hex, lower case
        [{"name": "has space", "sha256": key_digest(LABELER)}],
        [{"name": "a", "sha256": key_digest(LABELER)}, {"name": "a", "sha256": key_digest("x")}],
        [
            {"name": "a", "sha256": key_digest(LABELER)},
            {"name": "b", "sha256": key_digest(LABELER)},
        ],
    ],
)
def test_settings_refuse_keys_that_cannot_work(api_keys):
    with pytest.raises(ValidationError):
        AuthSettings(api_keys=api_keys)


def test_the_cli_makes_a_key_whose_entry_lets_it_in(capsys):
    assert cli.main(["keys", "new", "labeler@example.org"]) == 0
    lines = capsys.readouterr().out.splitlines()
    key = lines[0].rsplit(" ", 1)[1]
    entry = json.loads(lines[1].split(": ", 1)[1])
    keys = AuthSettings(api_keys=[entry]).api_keys
    assert caller(request(f"Bearer {key}"), keys, "POST /feedback") == "labeler@example.org"
    assert cli.main(["keys", "new", "not a name"]) == 2
