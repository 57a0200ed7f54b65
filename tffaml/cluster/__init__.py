"""A simulation spread over TFF workers on several machines (scripts/worker.py, config.runtime)."""
