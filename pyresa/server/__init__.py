"""pyresa's OpenAI-compatible server (needs the `server` extra: fastapi, uvicorn, sse-starlette)."""

from pyresa.server.app import create_app  # noqa: F401
