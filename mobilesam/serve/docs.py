"""``GET /docs``: Swagger UI over the app's OpenAPI schema, only when the settings ask for it.

FastAPI's docs pages load their script from a CDN. A script on the API's page runs with the
API's origin, and same-origin requests pass the cross-site guard, so the page is off by
default (``ServerSettings.docs``, ``mobilesam serve --docs``). When it is on, its
Content-Security-Policy names exactly what it may load: Swagger UI's script and stylesheet
from ``docs_assets_url``'s origin, its one inline script by hash, and the schema from this
origin. ReDoc (fonts and a script from two more origins) is not served.
"""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

__all__ = ["docs_router"]


def docs_router(assets_url: str, openapi_url: str) -> APIRouter:
    """A router with ``GET /docs``: Swagger UI loading ``swagger-ui-bundle.js`` and
    ``swagger-ui.css`` from ``assets_url`` (a URL, or a path on this server) and the schema
    from ``openapi_url``."""
    base = assets_url.rstrip("/")
    html = get_swagger_ui_html(
        openapi_url=openapi_url,
        title="mobilesam API",
        swagger_js_url=f"{base}/swagger-ui-bundle.js",
        swagger_css_url=f"{base}/swagger-ui.css",
        swagger_favicon_url="data:,",
        oauth2_redirect_url=None,
        # no validator badge: it would be an image from validator.swagger.io
        swagger_ui_parameters={"validatorUrl": None},
    ).body
    headers = {"Content-Security-Policy": docs_csp(html.decode(), base)}
    router = APIRouter()

    @router.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    return router


def docs_csp(html: str, assets_url: str) -> str:
    """The Content-Security-Policy of the docs page ``html``: scripts from ``assets_url``'s
    origin and the page's inline scripts by SHA-256; styles from there too (Swagger UI sets
    inline styles); the schema fetched from this origin only."""
    parts = urlsplit(assets_url)
    origin = f"{parts.scheme}://{parts.netloc}" if parts.netloc else "'self'"
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    ]
    return (
        f"default-src 'none'; script-src {' '.join([origin, *hashes])}; "
        f"style-src {origin} 'unsafe-inline'; img-src 'self' data: {origin}; "
        f"font-src {origin}; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
