"""Vigil vigil."""
