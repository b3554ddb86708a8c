"""Django management commands of retrysafe: `manage.py retrysafe_keys`.

Django finds them once `"retrysafe.integrations"` is in `INSTALLED_APPS` (it adds no models).
"""
