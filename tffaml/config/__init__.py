"""The config layer: the only package that reads an `ml_collections.ConfigDict` and turns it into typed choices."""
