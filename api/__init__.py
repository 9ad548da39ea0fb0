"""Vigil api."""
