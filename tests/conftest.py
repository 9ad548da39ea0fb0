"""Shared test set-up: the real servers of tests/services.py are available to every test."""

pytest_plugins = ["tests.services"]
