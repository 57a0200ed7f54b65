"""A federation of separate institutions over Flower: coordinator, nodes and their messages."""
