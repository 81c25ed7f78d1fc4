"""Build a small, randomly initialised Llama-architecture chat model that the project owns.

No hub access is needed: a byte-level BPE tokenizer is trained on the given texts (typically the
expert trajectories' messages) with the ``tokenizers`` library, a ``LlamaForCausalLM`` is built
from a named size, and both are saved as an ordinary Hugging Face model directory (config,
``model.safetensors``, ``tokenizer.json``, tokenizer config with a chat template, generation
config). Load it with ``AutoModelForCausalLM.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)``.

Chat format (the template ships with the tokenizer)::

    <|bos|><|user|>\\n{user text}<|eot|>\\n<|assistant|>\\n{assistant text}<|eot|>\\n ...

``<|eot|>`` is the end-of-turn token and the tokenizer's ``eos_token``, so generation stops at
the end of an assistant turn. ``add_generation_prompt=True`` appends ``<|assistant|>\\n``.
The assistant text plus its ``<|eot|>`` is wrapped in ``{% generation %}`` markers, so
``apply_chat_template(..., return_assistant_tokens_mask=True)`` works too.

CLI::

    python -m steca.training.bootstrap --sft_file data/alfworld_sft.json \\
        [--extra_text_file more.jsonl ...] --output_dir models/tiny --size tiny
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from eval_agent.storage import read_utf8
from steca.training.chat import FALLBACK_CHAT_TEMPLATE

logger = logging.getLogger(__name__)

BOS, EOT, PAD, UNK = "<|bos|>", "<|eot|>", "<|pad|>", "<|unk|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [PAD, BOS, EOT, UNK, *ROLE_TOKENS.values()]

# the same template the training code falls back to for tokenizers without one
CHAT_TEMPLATE = FALLBACK_CHAT_TEMPLATE


@dataclass(frozen=True)
class ModelSize:
    """A named model size: tokenizer vocabulary and Llama dimensions."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int = 4096


SIZES: dict[str, ModelSize] = {
    # for unit tests (~0.16M parameters)
    "nano": ModelSize(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=176),
    # the CPU demo (~0.9M parameters): four layers, enough to copy object names from the observation
    "mini": ModelSize(vocab_size=1024, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=352),
    # CPU default (~3.7M parameters with a 2k vocabulary)
    "tiny": ModelSize(vocab_size=2048, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=688),
    # a bigger CPU/GPU model (~27M parameters)
    "small": ModelSize(vocab_size=4096, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=8, intermediate_size=1376),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE tokenizer (``tokenizers.Tokenizer``) with the chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def wrap_tokenizer(tok):
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer with the chat template."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOT, pad_token=PAD,
                                 unk_token=UNK, additional_special_tokens=list(ROLE_TOKENS.values()),
                                 model_max_length=SIZES["tiny"].max_position_embeddings)
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "right"
    return hf


def build_config(size: str, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """A ``LlamaConfig`` for a named size with the tokenizer's vocabulary and special ids."""
    from transformers import LlamaConfig

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    s = SIZES[size]
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads, max_position_embeddings=s.max_position_embeddings,
        rms_norm_eps=1e-5, initializer_range=0.02, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
    )


def bootstrap_model(texts: Iterable[str], output_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Train a tokenizer on ``texts``, build a random-init Llama of ``size`` and save both to ``output_dir``.

    Returns the output directory. The directory is a normal Hugging Face model directory.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(seed)
    torch.manual_seed(seed)

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("bootstrap_model: no training text given")
    logger.info("training a %d-token byte-level BPE tokenizer on %d texts", SIZES[size].vocab_size, len(texts))
    tok = wrap_tokenizer(train_tokenizer(texts, SIZES[size].vocab_size))
    ids = {t: tok.convert_tokens_to_ids(t) for t in (BOS, EOT, PAD)}
    config = build_config(size, len(tok), ids[BOS], ids[EOT], ids[PAD])
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("built a %s Llama: %.2fM parameters, vocab %d", size, n_params / 1e6, len(tok))
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=ids[EOT],
                                               pad_token_id=ids[PAD], do_sample=False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def texts_from_file(path: str | Path) -> Iterator[str]:
    """Training texts from a file: message contents of SFT/pair/step records (JSON array or JSONL),
    string values of other JSON objects, or the lines of a plain-text file."""
    p = Path(path)
    raw = read_utf8(p)
    objs: list = []
    stripped = raw.lstrip()
    if stripped.startswith("["):
        try:
            objs = json.loads(raw)
        except json.JSONDecodeError:
            objs = []
    elif stripped.startswith("{"):
        try:
            objs = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError:
            objs = []
    if not objs:
        yield from (line for line in raw.splitlines() if line.strip())
        return
    for obj in objs:
        yield from _strings(obj)


def _strings(obj: object) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k not in ("id", "game_file", "role", "from"):
                yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def sft_texts(path: str | Path) -> list[str]:
    """Message texts of an SFT file read with ``steca.records.load_sft`` (bad records are skipped and logged)."""
    from steca.records import load_sft

    res = load_sft(path)
    if res.errors:
        logger.warning("%s: %d record(s) skipped for the tokenizer", path, len(res.errors))
    return [m.content for r in res.records for m in r.conversations]


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sft_file", required=True, help="SFT trajectories (JSON array or JSONL) to train the tokenizer on")
    ap.add_argument("--extra_text_file", action="append", default=[],
                    help="more text for the tokenizer (records or plain text); may be repeated")
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    texts = sft_texts(args.sft_file)
    for extra in args.extra_text_file:
        texts.extend(texts_from_file(extra))
    out = bootstrap_model(texts, args.output_dir, size=args.size, seed=args.seed)
    logger.info("saved %s", out)
    return out


if __name__ == "__main__":
    main()
