"""`manage.py retrysafe_keys`: the `retrysafe keys` command line on the project's store."""
