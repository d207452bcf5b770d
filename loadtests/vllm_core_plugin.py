"""pytest plugin for ``vllm_core_tests.py``: runs vLLM's own core tests stock or on the plugin.

``BREADCRUMBS_CORE_MODE=ours`` makes every model config a beacon model (a ``breadcrumbs`` block
with no default ratio, so nothing is compressed), every ``Scheduler`` the tests build a
``BreadcrumbsScheduler`` (which adopts its KV manager as a ``PhysicalBlockAccountant``) and
every ``KVCacheManager`` they build directly an accountant, refused like the scheduler's for
layouts with several KV groups. vLLM's ``AsyncScheduler`` stays: beacon engines refuse async
scheduling. ``BREADCRUMBS_CORE_REPORT`` names a JSON-lines file that gets each test's outcome
and, for a failure, its error line. The sdist's own top-level ``conftest.py`` needs vLLM's test
requirements; :func:`caplog_vllm` is the one fixture of it these tests use.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

MODE = os.environ.get("BREADCRUMBS_CORE_MODE", "stock")
#: The block the stand-in configs carry in ``ours`` mode: ratios but no default, so a request
#: without ``compression_ratio`` (all of vLLM's) runs uncompressed.
BLOCK = {"beacon_token_id": 3, "ratios": [2, 4, 8], "default_ratio": None}


@pytest.fixture()
def caplog_vllm(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """vLLM's fixture: its logger's records reach ``caplog`` (which reads the root logger)."""
    logger = logging.getLogger("vllm")
    previous, logger.propagate = logger.propagate, True
    with caplog.at_level(logging.INFO):
        yield caplog
    logger.propagate = previous


def _beacon_everywhere() -> None:
    from breadcrumbs_vllm.vllm_plugin.model import BeaconModel

    original = BeaconModel.from_model_config.__func__

    def from_model_config(cls, model_config: Any) -> BeaconModel | None:
        hf_config = getattr(model_config, "hf_config", None)
        if hf_config is not None and not isinstance(getattr(hf_config, "breadcrumbs", None), dict):
            hf_config.breadcrumbs = dict(BLOCK)
        return original(cls, model_config)

    BeaconModel.from_model_config = classmethod(from_model_config)


def _ours_classes() -> dict[str, type]:
    from vllm.v1.core.kv_cache_manager import KVCacheManager

    from breadcrumbs_vllm.vllm_plugin.metrics import CompressionStats
    from breadcrumbs_vllm.vllm_plugin.scheduler import BreadcrumbsScheduler, PhysicalBlockAccountant

    class Accountant(PhysicalBlockAccountant):
        """A ``KVCacheManager`` built directly by a test, adopted as the scheduler adopts it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            KVCacheManager.__init__(self, *args, **kwargs)
            vars(self).update(vars(PhysicalBlockAccountant.adopt(self, {}, CompressionStats())))

    return {"Scheduler": BreadcrumbsScheduler, "KVCacheManager": Accountant}


def pytest_configure(config: pytest.Config) -> None:
    if MODE == "ours":
        _beacon_everywhere()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Swap vLLM's classes for the plugin's in the modules the tests read them from."""
    if MODE != "ours":
        return
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.core.sched.scheduler import Scheduler

    stock = {"Scheduler": Scheduler, "KVCacheManager": KVCacheManager}
    ours = _ours_classes()
    for name, module in list(sys.modules.items()):
        if not name.startswith("tests.v1.core"):
            continue
        for attr, cls in stock.items():
            if getattr(module, attr, None) is cls:
                setattr(module, attr, ours[attr])


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("BREADCRUMBS_CORE_REPORT")
    if not path or (report.when != "call" and report.passed):
        return
    message = ""
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)[-500:]
    with open(path, "a") as out:
        out.write(json.dumps({"test": report.nodeid, "when": report.when,
                              "outcome": report.outcome, "message": message}) + "\n")
