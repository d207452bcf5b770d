"""The reference engine (the oracle) and the training-free eviction baselines."""

from breadcrumbs_vllm.reference.engine import GenerationRequest, GenerationResult, ReferenceEngine
from breadcrumbs_vllm.reference.policies import POLICIES, TOVA, KVPolicy, StreamingLLM, make_policy

__all__ = [
    "POLICIES",
    "TOVA",
    "GenerationRequest",
    "GenerationResult",
    "KVPolicy",
    "ReferenceEngine",
    "StreamingLLM",
    "make_policy",
]
