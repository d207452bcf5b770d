"""The gateway's subcommands of ``breadcrumbs``: ``serve`` and ``router``.

The ``breadcrumbs`` command lives in ``breadcrumbs_vllm.cli``, which knows nothing of the gateway:
these modules plug into it through the ``breadcrumbs.commands`` entry points that
``pyproject.toml`` declares, each exposing ``register(subparsers)`` like the built-in ones.
"""
