"""The Django app that `"retrysafe.integrations"` in `INSTALLED_APPS` installs.

It brings the `retrysafe_keys` management command and no models. Django finds this
`AppConfig` by itself. Its label is `retrysafe`, not the last part of the module path: a
project's own app named `integrations` (a common name) would otherwise clash with it, and
Django would refuse to start ("Application labels aren't unique").
"""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]  # only Django imports this

__all__ = ["RetrysafeConfig"]


class RetrysafeConfig(AppConfig):  # type: ignore[misc]  # Django has no type hints
    """retrysafe's integrations as a Django app, labelled `retrysafe`."""

    name = "retrysafe.integrations"
    label = "retrysafe"
    verbose_name = "retrysafe"
