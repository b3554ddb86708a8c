"""The operator's web console over a store: `retrysafe console --store URL` serves it.

It shows, per namespace, the records in flight and done, the stuck ones (in flight, lease
expired, and for how long) and one record in full with its decoded outcome; it deletes one
record or purges expired ones, each after a confirmation step. Every page and every call of
its JSON API (which the pages are rendered from) needs the bearer token; a state change is a
POST, refused from another site. See docs/console.md.

    from retrysafe import open_store
    from retrysafe.console import create_app

    app = create_app(open_store("sqlite:///retrysafe.db"), token="...")  # serve with uvicorn

The console needs the `cli` extra (Starlette, uvicorn).
"""

from __future__ import annotations

from retrysafe._extras import missing_extra

try:
    from retrysafe.console._app import create_app
except ImportError as error:
    raise missing_extra("The retrysafe console", "cli", error) from error

__all__ = ["create_app"]
