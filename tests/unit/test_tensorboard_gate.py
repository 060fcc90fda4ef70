"""TokenGate, the WSGI gate in front of TensorBoard, with werkzeug's test client around a tiny app."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from werkzeug.test import Client

from chexstack.tensorboard_gate import COOKIE, TokenGate, main

ADMIN = "a" * 48
READ = "r" * 48


def board(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"board {environ['PATH_INFO']}?{environ.get('QUERY_STRING', '')}".encode()]


@pytest.fixture
def client() -> Client:
    return Client(TokenGate(board, [ADMIN, READ]))


@pytest.mark.parametrize("token", [ADMIN, READ])
def test_either_hub_token_opens_it_as_a_bearer_header(client: Client, token: str) -> None:
    res = client.get("/data/logdir", headers={"Authorization": f"Bearer {token}"})
    assert (res.status_code, res.get_data(as_text=True)) == (200, "board /data/logdir?")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer " + READ + "x"},
        {"Authorization": "Basic " + READ},
        {"Cookie": f"{COOKIE}=nope"},
        {"Cookie": "garbage\x00=;;"},
    ],
)
def test_no_or_a_wrong_token_is_401_with_where_the_token_is(client: Client, headers: dict[str, str]) -> None:
    res = client.get("/data/runs", headers=headers)
    assert res.status_code == 401
    assert "hub-read-token" in res.get_data(as_text=True)
    assert "board" not in res.get_data(as_text=True)


def test_the_token_in_the_address_becomes_a_cookie_and_leaves_the_address(client: Client) -> None:
    res = client.get(f"/?token={READ}&foo=1")
    assert res.status_code == 303
    assert res.headers["Location"] == "/?foo=1"
    cookie = res.headers["Set-Cookie"]
    assert f"{COOKIE}={READ}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # The client keeps the cookie: the next request gets through without a token.
    again = client.get("/data/plugins_listing")
    assert (again.status_code, again.get_data(as_text=True)) == (200, "board /data/plugins_listing?")


def test_a_wrong_token_in_the_address_sets_no_cookie(client: Client) -> None:
    res = client.get("/?token=wrong")
    assert res.status_code == 401 and "Set-Cookie" not in res.headers
    assert client.get("/data/runs").status_code == 401


def test_a_gate_without_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        TokenGate(board, ["", ""])


def test_main_refuses_to_start_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("CHEXSTACK_HUB_TOKEN", "CHEXSTACK_HUB_READ_TOKEN"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name + "_FILE", raising=False)
    assert main(["--logdir", "/nonexistent"]) == 2
    assert "no token" in capsys.readouterr().err
    monkeypatch.setenv("CHEXSTACK_HUB_READ_TOKEN_FILE", "/nonexistent/hub-read-token")
    assert main(["--logdir", "/nonexistent"]) == 2
    assert "CHEXSTACK_HUB_READ_TOKEN_FILE=/nonexistent/hub-read-token: cannot read" in capsys.readouterr().err
