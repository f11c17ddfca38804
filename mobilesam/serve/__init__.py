"""``mobilesam serve``: an HTTP API over one model (FastAPI). Needs the ``serve`` extra:
``pip install "mobilesam[serve]"``. The library never imports this package."""

from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
