"""Vigil edge."""
