"""The store faces: hand-written async here, generated sync in `stores/_sync/`."""
