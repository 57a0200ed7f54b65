"""A federation of institutions' own machines (Flower transport)."""
