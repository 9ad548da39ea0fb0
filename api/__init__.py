"""Vigil's HTTP API: devices, agents, readings and dead letters, read through the store interface.

Entry points: ``api.main.create_app(settings, store=None)`` builds the FastAPI app and
``api.server.run(settings, stop_event=None, store=None)`` serves it with uvicorn. Nothing is
created at import time, and this package imports nothing on import, so loading
``api.settings`` (e.g. for the CLI's help) does not pull in FastAPI or uvicorn.
"""
