"""Who may use the dashboard: the token, and two guards for a dashboard on loopback.

With a token configured, every request — pages, API, event streams, static files — must carry
it: ``Authorization: Bearer <token>``, ``?token=<token>``, or the cookie a browser gets when it
opens a page with ``?token=`` (it is then redirected to the same URL without it, so the token
does not stay in the address bar or the history).

Without a token the server only listens on loopback (``oneshot ui`` refuses anything else),
but a web page in the user's browser can still reach loopback. So then the ``Host`` header must
name a loopback address (a page on a rebound DNS name is refused), and in every case a request
that changes something (cancel) from a page of another origin is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "oneshot_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Guard:
    """ASGI middleware: refuses what the rules above refuse, before the app sees it."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response = self._refusal(request)
        if response is None and self.token is not None and _is_page(request) \
                and "token" in request.query_params:
            response = self._clean_redirect(request)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, request: Request) -> Response | None:
        if self.token is None and not _loopback_name(request.url.hostname):
            return _refuse(request, 403, "this dashboard answers only to loopback host names")
        if self.token is not None and not self._carries_token(request):
            return _refuse(request, 401, "this dashboard needs its token (ONESHOT_UI__TOKEN): "
                                         "send 'Authorization: Bearer TOKEN', or open it once "
                                         "with ?token=TOKEN")
        if request.method not in SAFE_METHODS and _cross_origin(request):
            return _refuse(request, 403, "cross-origin request refused")
        return None

    def _carries_token(self, request: Request) -> bool:
        assert self.token is not None
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        offered = [credentials if scheme.lower() == "bearer" else None,
                   request.query_params.get("token"), request.cookies.get(COOKIE)]
        return any(given is not None and hmac.compare_digest(given.encode(), self.token.encode())
                   for given in offered)

    def _clean_redirect(self, request: Request) -> Response:
        """The same page without ``?token=``, with the token in a cookie instead."""
        assert self.token is not None
        query = urlencode([(key, value) for key, value in request.query_params.multi_items()
                           if key != "token"])
        response = RedirectResponse(str(URL(path=request.url.path, query=query)), 303)
        response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return response


def _refuse(request: Request, status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if _is_page(request):
        return PlainTextResponse(f"{status}: {message}\n", status, headers=headers)
    return JSONResponse({"detail": message}, status, headers=headers)


def _is_page(request: Request) -> bool:
    """A page a person opens (not the API, its schema, or a static file)."""
    path = request.url.path
    return not path.startswith(("/api/", "/static/")) and path != "/openapi.json"


def _loopback_name(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _cross_origin(request: Request) -> bool:
    """The browser says the request comes from a page of another origin (clients other than
    browsers send no Origin header)."""
    origin = request.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != request.headers.get("host")
