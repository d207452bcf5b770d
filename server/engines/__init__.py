"""Engine backends behind the gateway: vLLM in-process (embedded) or one vLLM server (remote)."""

from server.engines.base import EngineBackend

__all__ = ["EngineBackend"]
