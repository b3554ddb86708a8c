"""Transactional mode's drivers of I/O: hand-written async here, generated sync in `_sync/`."""
