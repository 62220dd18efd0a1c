"""The web dashboard of ``oneshot ui``: pages, a JSON API under ``/api/``, live output.

:func:`create_app` builds the ASGI app over an open orchestrator; :func:`serve` runs it with
uvicorn on a socket from :func:`listen`. The design, the API and the security model are in
docs/ui.md.
"""

from __future__ import annotations

from orchestrator.ui.app import create_app
from orchestrator.ui.server import is_loopback, listen, serve, url_of

__all__ = ["create_app", "is_loopback", "listen", "serve", "url_of"]
