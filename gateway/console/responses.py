"""The console's responses: every one with the same security headers.

The Content-Security-Policy allows nothing but the gateway itself — scripts and styles from
``/static/`` only, no inline script or style, no framing, forms posting back here only.
"""

from __future__ import annotations

from http import HTTPStatus

from ..http import response

__all__ = ["SECURITY_HEADERS", "asset_response", "html_response", "redirect", "text_response"]

SECURITY_HEADERS = (
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self';"
    " img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none';"
    " base-uri 'none'",
    "X-Content-Type-Options: nosniff",
    "X-Frame-Options: DENY",
    "Referrer-Policy: same-origin",
)
_HTML = "text/html; charset=utf-8"


def html_response(status: HTTPStatus, page: str, headers: tuple[str, ...] = ()) -> bytes:
    return response(status, _HTML, page.encode(), (*SECURITY_HEADERS, *headers))


def text_response(status: HTTPStatus, text: str) -> bytes:
    body = f"{int(status)} {status.phrase}: {text}\n".encode()
    return response(status, "text/plain; charset=utf-8", body, SECURITY_HEADERS)


def asset_response(content_type: str, body: bytes) -> bytes:
    return response(HTTPStatus.OK, content_type, body, SECURITY_HEADERS)


def redirect(location: str, headers: tuple[str, ...] = ()) -> bytes:
    """``303 See Other`` to ``location`` (a path of this gateway)."""
    return response(
        HTTPStatus.SEE_OTHER,
        "text/plain; charset=utf-8",
        f"see {location}\n".encode(),
        (*SECURITY_HEADERS, f"Location: {location}", *headers),
    )
