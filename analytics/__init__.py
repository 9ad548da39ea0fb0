"""Vigil analytics."""
