"""Grouped-query attention without transformers' copy of the keys per query head, against transformers' own.

The ``hf`` backend's attention function (``eval_agent/agents/shared_prefix.py``) sends calls without a
shared prompt to ``transformers_adapter.sdpa_attention``. With grouped-query heads and a padding mask,
transformers' SDPA function copies each kv head's keys and values once per query head of its group
(``repeat_kv``: the whole cache, every layer, every decoding step); the adapter splits the query heads
instead and gives the same output bit for bit. This benchmark starts the demo's evaluation twice at the
same moment, once with transformers' function in that place and once with the adapter's, prints each
one's wall time and CPU seconds, whether their outputs are byte-identical, then
``ratio=<transformers' wall / the adapter's wall>``.

    python benchmarks/gqa_attention.py --model_dir runs/demo_seed0/models/sft --data_dir runs/demo_seed0/bench

The model must have fewer kv heads than query heads, as the demo's models (``mini``: 4 heads, 2 kv heads).
"""
from __future__ import annotations

import argparse
import filecmp
import os
import sys
from pathlib import Path

from allocator import ROOT, demo_evaluation, run_together, tuned_value

# the evaluation with transformers' SDPA function where the project's attention calls the adapter's
_TRANSFORMERS_SDPA = (
    "import runpy, sys\n"
    "from transformers.integrations.sdpa_attention import sdpa_attention_forward\n"
    "import eval_agent.agents.shared_prefix as shared_prefix\n"
    "shared_prefix.sdpa_attention = sdpa_attention_forward\n"
    "sys.argv[0] = 'eval_agent.main'\n"
    "runpy.run_module('eval_agent.main', run_name='__main__', alter_sys=True)\n")


def same_files(a: Path, b: Path) -> bool:
    """Whether folders ``a`` and ``b`` hold the same files with the same bytes (logs left out)."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.suffix != ".log")
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.suffix != ".log")
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True, help="the model evaluated (e.g. the demo's SFT model)")
    ap.add_argument("--data_dir", required=True, help="the games: a folder with json_2.1.1/valid_seen")
    ap.add_argument("--output_dir", default="runs/gqa_attention_benchmark", help="the evaluations' outputs (replaced)")
    args = ap.parse_args()
    command = demo_evaluation(args.model_dir, args.data_dir)
    env = dict(os.environ) | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLIBC_TUNABLES": tuned_value()}
    out = {name: Path(args.output_dir) / name for name in ("transformers", "adapter")}
    runs = {"transformers": ([sys.executable, "-c", _TRANSFORMERS_SDPA, *command[3:]], env),
            "adapter": (command, env)}
    results = run_together({name: ([part.replace("{output}", os.fspath(out[name])) for part in argv], e)
                            for name, (argv, e) in runs.items()})
    identical = same_files(ROOT / out["transformers"], ROOT / out["adapter"])
    print(f"outputs identical: {identical}")
    print(f"ratio={results['transformers'][0] / results['adapter'][0]:.2f}")


if __name__ == "__main__":
    main()
