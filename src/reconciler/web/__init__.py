"""The web service: subscriber pages, tracking, the API and webhooks."""

from reconciler.web.app import create_app

__all__ = ["create_app"]
