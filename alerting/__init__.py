"""Vigil alerting."""
