"""A/B experiments: definitions, sticky assignment, the registry, and per-arm results."""
