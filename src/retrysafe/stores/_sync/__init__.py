# Generated from stores/_async/__init__.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The store faces: hand-written async here, generated sync in `stores/_sync/`."""
