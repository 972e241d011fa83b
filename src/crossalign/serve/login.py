"""The sign-in form of a service started with a token.

The page asks for the token once; ``POST /login`` checks it in constant time and sets a cookie
derived from it (``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the service is reached over
TLS), so the browser's later requests carry it and scripts never see it.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from crossalign.serve._login_page import login_html
from crossalign.serve.guard import COOKIE, Access, session_value

__all__ = ["add_login_routes"]

SESSION_DAYS = 30


def add_login_routes(app: FastAPI, access: Access) -> None:
    """``GET /login`` (the form), ``POST /login`` (sign in) and ``POST /logout``."""

    @app.get("/login", include_in_schema=False)
    def form():
        return HTMLResponse(login_html("Sign in with the token of this service."),
                            headers={"Cache-Control": "no-store"})

    @app.post("/login", include_in_schema=False)
    def sign_in(request: Request, token: str = Form("", max_length=4096)):
        if access.token is None:
            return RedirectResponse("/", status_code=303)
        if not hmac.compare_digest(token.strip().encode(), access.token.encode()):
            return HTMLResponse(login_html("That is not the token of this service.", error=True),
                                status_code=401, headers={"Cache-Control": "no-store"})
        answer = RedirectResponse("/", status_code=303)  # a path of this origin, never a Host
        secure = access.secure_cookie or request.url.scheme == "https"
        answer.set_cookie(COOKIE, session_value(access.token), max_age=SESSION_DAYS * 86400,
                          httponly=True, samesite="strict", secure=secure, path="/")
        return answer

    @app.post("/logout", include_in_schema=False)
    def sign_out():
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                             secure=access.secure_cookie)
        return answer
