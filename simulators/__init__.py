"""Vigil simulators."""
