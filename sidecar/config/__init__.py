"""The configuration: the models, where values come from, loading and its
errors, which values are secret, and which keys change live (SIGHUP)."""
