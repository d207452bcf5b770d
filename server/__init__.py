"""The breadcrumbs serving gateway: an OpenAI-compatible FastAPI front for vLLM with beacons.

``create_app(settings)`` builds the app; the engine behind it is either vLLM's ``AsyncLLM``
in-process (embedded) or one or more vLLM OpenAI servers (remote). See ``docs`` in each module.
"""

from server.app import create_app
from server.settings import Settings

__all__ = ["Settings", "create_app"]
