"""Write tiny random-weight GGUF models that a real ``llama-server`` loads in a second.

A 2-layer llama with a 64-wide embedding: its output is noise, but it tokenizes, chats
(plain and SSE), completes and embeds like any model. The tokenizer is copied from a
vocab-only GGUF in the llama.cpp source tree (``models/ggml-vocab-*.gguf``) that the
build keeps in the cache.

Usable as a function (``write_tiny_model(path)``) and as a command
(``python -m tests.runtime.tiny_model OUT.gguf``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from .llamacpp_build import vocab_dir

VOCAB_FILE = "ggml-vocab-llama-spm.gguf"
# ChatML, so chat requests work without depending on the server's fallback template.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TOKENIZER_FIELDS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
)


def _copy_tokenizer(writer: Any, vocab_path: Path) -> int:
    import gguf

    reader = gguf.GGUFReader(vocab_path)
    n_vocab = 0
    for name in TOKENIZER_FIELDS:
        field = reader.fields.get(name)
        if field is None:
            continue
        value = field.contents()
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, vtype, sub_type=sub_type)
        if name == "tokenizer.ggml.tokens":
            n_vocab = len(value)
    if not n_vocab:
        raise RuntimeError(f"{vocab_path} has no tokenizer.ggml.tokens")
    return n_vocab


def write_tiny_model(
    path: Path,
    *,
    name: str = "tiny-llama",
    n_embd: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_ff: int = 128,
    n_ctx: int = 2048,
    seed: int = 0,
    vocab: Path | None = None,
) -> Path:
    """Write a random llama model to ``path`` (returned); the same seed, the same file."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    n_vocab = _copy_tokenizer(writer, vocab or vocab_dir() / VOCAB_FILE)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_heads)
    writer.add_rope_dimension_count(n_embd // n_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    def weights(*shape: int) -> np.ndarray[Any, Any]:
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    def norm() -> np.ndarray[Any, Any]:
        return np.ones(n_embd, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weights(n_vocab, n_embd))
    for i in range(n_layers):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", norm())
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{blk}.{part}.weight", weights(n_embd, n_embd))
        writer.add_tensor(f"{blk}.ffn_norm.weight", norm())
        writer.add_tensor(f"{blk}.ffn_gate.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"{blk}.ffn_up.weight", weights(n_ff, n_embd))
        writer.add_tensor(f"{blk}.ffn_down.weight", weights(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", weights(n_vocab, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the .gguf file")
    parser.add_argument("--name", default="tiny-llama")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_tiny_model(args.out, name=args.name, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
