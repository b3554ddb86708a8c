# Generated from stores/_async/__init__.py by scripts/unasync.py; edit the source, not this.
"""Sync store faces: the source the sync faces in `stores/_sync/` are generated from."""
