"""The sign-in page's HTML, shared by the token check (before routing) and ``/login``."""

from __future__ import annotations

import html

__all__ = ["login_html", "login_page"]

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>crossalign search: sign in</title>
  <link rel="stylesheet" href="/static/style.css">
  <link rel="icon" href="data:,">
</head>
<body>
  <header><h1>crossalign search</h1></header>
  <form id="login" method="post" action="/login">
    <label>token <input id="token" name="token" type="password" autocomplete="current-password"
                        required autofocus></label>
    <button type="submit">Sign in</button>
  </form>
  <p id="status" class="{kind}" role="status">{message}</p>
</body>
</html>
"""


def login_html(message: str, error: bool = False) -> bytes:
    return _PAGE.format(message=html.escape(message), kind="error" if error else "muted").encode()


async def login_page(send, status: int = 200, message: str = "This search is shared with a "
                     "token: ask whoever runs it.") -> None:
    """Send the sign-in form as a whole ASGI answer (for the token check, before routing)."""
    body = login_html(message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
