"""The demo: a small payments API and a run that shows what idempotency keys change under faults.

`retrysafe serve-demo` serves the API; `retrysafe demo` drives it through a faulty network
twice, without keys and with them, and counts the charges in the API's own payments table.
"""

from __future__ import annotations

from retrysafe._extras import missing_extra

try:
    from retrysafe._urls import redact_url
    from retrysafe.demo._app import DemoApp, create_app
    from retrysafe.demo._layers import TenantTraffic, Traffic
    from retrysafe.demo._report import DemoReport, RunResult
    from retrysafe.demo._runner import DemoSettings, ProgressHook, check_store, run_demo
    from retrysafe.demo._schema import Payment, Tables, User
    from retrysafe.demo._tables import DemoDatabase
except ImportError as error:
    raise missing_extra("retrysafe.demo", "cli", error) from error

__all__ = [
    "DemoApp",
    "DemoDatabase",
    "DemoReport",
    "DemoSettings",
    "Payment",
    "ProgressHook",
    "RunResult",
    "Tables",
    "TenantTraffic",
    "Traffic",
    "User",
    "check_store",
    "create_app",
    "redact_url",
    "run_demo",
]
