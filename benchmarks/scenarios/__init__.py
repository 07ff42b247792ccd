"""Scenario scripts, one per scheduler family; each is run by path in its own interpreter."""
