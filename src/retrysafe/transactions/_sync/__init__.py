# Generated from transactions/_async/__init__.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""Transactional mode's drivers of I/O: hand-written async here, generated sync in `_sync/`."""
