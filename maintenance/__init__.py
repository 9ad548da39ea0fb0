"""Vigil maintenance."""
