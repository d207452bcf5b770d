"""The reference engine (the oracle) and the training-free eviction baselines."""

from breadcrumbs_vllm.reference.engine import GenerationRequest, GenerationResult, ReferenceEngine
from breadcrumbs_vllm.reference.policies import (
    H2O,
    POLICIES,
    RKV,
    TOVA,
    KVPolicy,
    RandomEviction,
    SnapKV,
    StreamingLLM,
    StreamingLLMSinks,
    make_policy,
)

__all__ = [
    "H2O",
    "POLICIES",
    "RKV",
    "TOVA",
    "GenerationRequest",
    "GenerationResult",
    "KVPolicy",
    "RandomEviction",
    "ReferenceEngine",
    "SnapKV",
    "StreamingLLM",
    "StreamingLLMSinks",
    "make_policy",
]
