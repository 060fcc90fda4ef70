"""TensorBoard behind the hub's tokens: TensorBoard has no authentication of its own.

    python -m chexstack.tensorboard_gate --logdir /var/lib/chexstack/logs --bind_all --port 6006

runs TensorBoard's own server (every argument is TensorBoard's) with `TokenGate` in front of its WSGI
app. The tokens are the hub's: $CHEXSTACK_HUB_TOKEN and $CHEXSTACK_HUB_READ_TOKEN, or the files their
`_FILE` variables name (the platform's compose secrets). Without any token it refuses to start.

A browser opens `/?token=<token>` once: the gate answers 303 to the same page without the token and
sets an HttpOnly, SameSite=Strict cookie, so the token leaves the address bar and history. Scripts send
`Authorization: Bearer <token>`. Anything else gets 401 with a page that says where the token is.
"""

from __future__ import annotations

import hmac
import sys
from collections.abc import Callable, Iterable, Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from chexstack.settings import secret

COOKIE: Final = "chexstack_tensorboard"
TOKEN_VARIABLES: Final = ("CHEXSTACK_HUB_TOKEN", "CHEXSTACK_HUB_READ_TOKEN")
# Where the platform keeps the tokens (the 401 page names them; the gate never reads them itself).
HINT: Final = "the hub's read token: sudo cat /opt/chexstack/secrets/hub-read-token"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class TokenGate:
    """WSGI middleware: a request reaches `app` only with one of `tokens` (header, cookie or ?token=)."""

    def __init__(self, app: WsgiApp, tokens: Sequence[str], *, hint: str = HINT) -> None:
        tokens = [t for t in tokens if t]
        if not tokens:
            raise ValueError("TokenGate needs at least one token")
        self.app = app
        self.tokens = [t.encode() for t in tokens]
        self.hint = hint

    def _valid(self, presented: str) -> bool:
        given = presented.strip().encode()
        # Every comparison runs: the time taken says nothing about which token was close.
        return bool(sum(hmac.compare_digest(given, t) for t in self.tokens))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        from_query = [v for k, v in query if k == "token"]
        if from_query:
            if not self._valid(from_query[-1]):
                return self._refuse(start_response, "the token in the address is wrong")
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "/")) + (
                f"?{rest}" if rest else ""
            )
            cookie = f"{COOKIE}={from_query[-1].strip()}; Path=/; HttpOnly; SameSite=Strict"
            start_response(
                "303 See Other", [("Location", location), ("Set-Cookie", cookie), ("Content-Length", "0")]
            )
            return [b""]
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and self._valid(given):
            return self.app(environ, start_response)
        if self._valid(_cookie(environ.get("HTTP_COOKIE", ""))):
            return self.app(environ, start_response)
        return self._refuse(start_response, "this TensorBoard needs a token")

    def _refuse(self, start_response: StartResponse, why: str) -> Iterable[bytes]:
        body = (
            "<!doctype html><title>TensorBoard: token needed</title>"
            f"<p>{why}. Open this page with <code>?token=&lt;token&gt;</code> once ({self.hint});"
            " scripts send <code>Authorization: Bearer &lt;token&gt;</code>.</p>\n"
        ).encode()
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))),
             ("WWW-Authenticate", "Bearer"), ("Cache-Control", "no-store")],
        )  # fmt: skip
        return [body]


def _cookie(header: str) -> str:
    try:
        jar = SimpleCookie(header)
    except CookieError:
        return ""
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else ""


def tokens_from_env() -> list[str]:
    """The hub's tokens from the environment (ValueError names a `_FILE` that cannot be read)."""
    return [t for t in (secret(name) for name in TOKEN_VARIABLES) if t]


def main(argv: Sequence[str] | None = None) -> int:
    """TensorBoard's command line, served through TokenGate."""
    try:
        tokens = tokens_from_env()
    except ValueError as exc:
        print(f"chexstack.tensorboard_gate: {exc}", file=sys.stderr)
        return 2
    if not tokens:
        print(
            "chexstack.tensorboard_gate: no token: set CHEXSTACK_HUB_TOKEN(_FILE) or"
            " CHEXSTACK_HUB_READ_TOKEN(_FILE); run `tensorboard` itself for a TensorBoard without one",
            file=sys.stderr,
        )
        return 2
    from absl import app
    from tensorboard import default, main_lib, program

    def server(wsgi_app: WsgiApp, flags: Any) -> Any:
        return program.WerkzeugServer(TokenGate(wsgi_app, tokens), flags)

    main_lib.global_init()
    board = program.TensorBoard(plugins=default.get_plugins(), server_class=server)
    args = ["tensorboard", *(sys.argv[1:] if argv is None else argv)]
    app.run(board.main, argv=args, flags_parser=board.configure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
