"""``mobilesam serve``: an HTTP API over one model (FastAPI). Needs the ``serve`` extra:
``pip install "mobilesam[serve]"``; importing this package without it raises
:class:`ImportError` saying so. The library never imports this package."""

from importlib.util import find_spec


def _require_serve_extra() -> None:
    """:class:`ImportError` with the install line when a package of the extra is missing
    (python-multipart's module is ``python_multipart``, ``multipart`` before 0.0.13)."""
    needs = {
        "fastapi": ("fastapi",),
        "pydantic": ("pydantic",),
        "python-multipart": ("python_multipart", "multipart"),
    }
    missing = [pkg for pkg, modules in needs.items() if not any(map(find_spec, modules))]
    if missing:
        raise ImportError(
            f'mobilesam.serve needs {", ".join(missing)}: pip install "mobilesam[serve]"'
        )


_require_serve_extra()

from .app import ServerSettings, create_app  # noqa: E402

__all__ = ["ServerSettings", "create_app"]
