"""Async store faces: the source the sync faces in `stores/_sync/` are generated from."""
