"""A one-module Django project: settings, views marked with the decorator, and the URLconf."""

from __future__ import annotations

import json
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views import View

from retrysafe.integrations.django import idempotency
from tests.integrations.apps import Recorder

RECORDER = Recorder()
"""Where the views count their calls; tests put a fresh one here."""

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="retrysafe-tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        USE_TZ=True,
        RETRYSAFE={"STORE": "memory://", "ROUTES": {"/plain": {"required": True}}, "WAIT": 0},
    )
    django.setup()


def _created(path_: str) -> HttpResponse:
    body = json.dumps({"n": RECORDER.count(path_)})
    return HttpResponse(body, status=201, content_type="application/json")


@idempotency(required=True)
def required(request: HttpRequest) -> HttpResponse:
    """Marked required."""
    return _created("/required")


@idempotency()
def marked(request: HttpRequest) -> HttpResponse:
    """Marked with the defaults."""
    return _created("/marked")


def plain(request: HttpRequest) -> HttpResponse:
    """Not marked."""
    return _created("/plain")


@idempotency(exempt=True)
def exempt(request: HttpRequest) -> HttpResponse:
    """Marked exempt."""
    return _created("/exempt")


@idempotency(required=True)
class RequiredView(View):
    """A class-based view, marked on the class."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """Count the call."""
        return _created("/v1/required")


urlpatterns = [
    path("required", required),
    path("marked", marked),
    path("plain", plain),
    path("exempt", exempt),
    path("v1/required", RequiredView.as_view()),
]
