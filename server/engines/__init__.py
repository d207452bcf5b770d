"""Engine backends behind the gateway: vLLM in-process (embedded) or vLLM servers (remote)."""

from server.engines.base import Delta, EngineBackend, GenParams

__all__ = ["Delta", "EngineBackend", "GenParams"]
