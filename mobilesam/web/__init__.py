"""The whole model in the browser: ``mobilesam export --web DIR`` writes a self-contained
static site (the click-to-segment page, the ONNX graphs, ONNX Runtime Web's runtime files)
that runs MobileSAM on the device that holds the photo.

- :func:`build_site` writes the site (:mod:`mobilesam.web.site`);
- :mod:`mobilesam.web.runtime`: where ONNX Runtime Web's files come from (one pinned
  version, sha256-checked; a local copy, or the download cache);
- :mod:`mobilesam.web.server`: a static server with the cross-origin-isolation headers that
  WebAssembly threads need (``python -m mobilesam.web.server DIR``).

Exporting needs torch, onnx and onnxruntime (the ``onnx`` extra), never npm or Node.
"""

from .runtime import VERSION as ORT_WEB_VERSION
from .runtime import RuntimeMismatch, RuntimeNotFound
from .site import build_site

__all__ = ["ORT_WEB_VERSION", "RuntimeMismatch", "RuntimeNotFound", "build_site"]
