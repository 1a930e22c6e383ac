"""Before anything loads: model shapes, bytes per part, the card table, seconds per step, and the plan built of them."""
