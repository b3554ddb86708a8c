"""Native per-route settings for web frameworks, on top of the HTTP middleware.

One module per framework; import the one you use (importing this package imports none):

| framework | module                             | mark a route with                    |
|-----------|------------------------------------|--------------------------------------|
| Starlette | `retrysafe.integrations.starlette` | `@idempotency(...)` on the endpoint  |
| FastAPI   | `retrysafe.integrations.fastapi`   | `Depends(idempotency(...))`          |
| Litestar  | `retrysafe.integrations.litestar`  | `opt=idempotency(...)` on a handler  |
| Flask     | `retrysafe.integrations.flask`     | `@idempotency(...)` on the view      |
| Django    | `retrysafe.integrations.django`    | `@idempotency(...)` on the view      |

The middleware runs before the framework routes the request, so each module gives it a
`route_settings` hook that finds the route the framework will pick and reads its mark.
See docs/frameworks.md.
"""

from __future__ import annotations

__all__: list[str] = []
