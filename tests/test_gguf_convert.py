"""``breadcrumbs convert`` on GGUF files: refusals come before any tensor is dequantized.

The real GGUF path (SmolLM2-135M-Instruct from PyPI, dequantized, converted and served) runs in
``tests/test_smollm2_plugin.py``; these are the inputs it must refuse, each in one line.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from breadcrumbs_vllm.cli import main


def write_gguf(path: Path, arch: str) -> Path:
    """A GGUF file with the metadata of a 2-layer ``arch`` model and one tensor."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(128)
    writer.add_head_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((16, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("arch", "reason"), [
    ("gpt2", "gpt2 has no RoPE positions"),  # transformers reads it; the method cannot take it
    ("rwkv7", "cannot read rwkv7.gguf: GGUF model with architecture rwkv7 is not supported"),
])
def test_an_architecture_it_cannot_take_gets_one_line(tmp_path, capsys, arch, reason) -> None:
    model = write_gguf(tmp_path / f"{arch}.gguf", arch)
    assert main(["convert", "--model", str(model), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"breadcrumbs convert: error: {reason}") and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"GGUF", b"not a gguf file at all, just text"])
def test_a_truncated_or_foreign_file_gets_one_line(tmp_path, capsys, content) -> None:
    (tmp_path / "bad.gguf").write_bytes(content)
    out = tmp_path / "out"
    assert main(["convert", "--model", str(tmp_path / "bad.gguf"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("breadcrumbs convert: error: cannot read bad.gguf: ") and "\n" not in err
    assert not out.exists()


def test_a_folder_with_two_gguf_files_asks_for_one(tmp_path, capsys) -> None:
    for name in ("a", "b"):
        write_gguf(tmp_path / f"{name}.gguf", "llama")
    assert main(["convert", "--model", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "holds 2 GGUF files; name one of them" in capsys.readouterr().err
