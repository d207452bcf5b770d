"""vLLM plugin: Breadcrumbs beacons and real KV eviction inside vLLM (see docs/plugin.md).

``register`` is the ``vllm.general_plugins`` entry point; vLLM calls it in every process. It
installs the plugin's patches, which do nothing for models without a ``breadcrumbs`` block.
"""


def register() -> None:
    from breadcrumbs_vllm.vllm_plugin.patches import install

    install()
