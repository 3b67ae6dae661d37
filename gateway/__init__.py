"""Gristmill gateway: the FastAPI app, auth, API routers, model backends and the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["__version__", "create_app", "create_asgi"]

if TYPE_CHECKING:
    from gateway.app import create_app, create_asgi


def __getattr__(name: str):  # noqa: ANN202 - imports the app lazily so `import gateway` is cheap
    if name in ("create_app", "create_asgi"):
        from gateway import app

        return getattr(app, name)
    raise AttributeError(name)
