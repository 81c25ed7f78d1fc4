"""scripts/gpu_smoke.sh in its dry mode on a CPU: every step's command line is built (the files it runs
exist), the steps a CPU can run pass (the Llama-layout model, the hf backend checks, the pairs, episodes
on real ALFWorld games), and the report ends with the table. The GPU steps have not run on a GPU yet."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_STEPS = ["sft_fsdp", "sft_fsdp_resume", "rl_fsdp_beta0", "rl_fsdp_beta", "rl_fsdp_lora", "dpo_fsdp",
             "sft_zero3", "rl_zero3", "sft_zero3_offload", "rl_zero3_offload", "rl_zero3_lora"]
CPU_STEPS = ["model", "pairs", "hf_backend", "eval_alfworld"]


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("parallel", ["3", "1"])
def test_dry_run_builds_every_step_and_runs_the_cpu_ones(alfworld_data, tmp_path, parallel):
    """Three steps side by side (--parallel 3): every step; one at a time (the default), the GPU steps only
    (--only: with the model and the pairs they need; the CPU steps are the parallel run's): the same lines, in
    step order."""
    out = tmp_path / "smoke"
    cpu_steps = CPU_STEPS if parallel != "1" else ["model", "pairs"]
    only = [] if parallel != "1" else ["--only", ",".join(GPU_STEPS)]
    proc = subprocess.run(["bash", "scripts/gpu_smoke.sh", "--dry-run", "--data", str(alfworld_data), "--out", str(out),
                           "--parallel", parallel, *only],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=3000)
    report = (out / "report.md").read_text()
    assert proc.returncode == 0, report + proc.stderr[-3000:]
    lines = report.splitlines()
    for name in cpu_steps:
        assert any(line.startswith(f"PASS {name} (") for line in lines), (name, report)
    for name in GPU_STEPS:
        assert any(line.startswith(f"DRY {name}: ") for line in lines), (name, report)
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| step | result") and len(table) == 1 + len(cpu_steps) + len(GPU_STEPS)  # header + rows
    steps = [row.split(" | ")[0].removeprefix("| ") for row in table[1:]]
    assert steps.index("model") < steps.index("pairs") < steps.index("sft_fsdp") < steps.index("sft_fsdp_resume")
    if parallel != "1":
        assert steps.index("model") < steps.index("hf_backend") < steps.index("sft_fsdp_resume") < steps.index("eval_alfworld")
    reported = [line.split()[1].rstrip(":") for line in lines if line.startswith(("PASS ", "DRY "))]
    assert reported == steps  # the report's lines in step order, whatever order the steps finished in
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(out / "model")
    assert cfg.use_cache and not cfg.tie_word_embeddings  # Llama-2's layout


def test_wheel_list_is_the_pinned_closure_without_torch():
    proc = subprocess.run([sys.executable, "scripts/gpu_smoke_checks.py", "wheels"], cwd=REPO, capture_output=True,
                          text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wheels = dict(line.split("==") for line in proc.stdout.split())
    assert wheels["transformers"] == "5.19.0" and wheels["trl"] == "1.16.0" and wheels["deepspeed"] == "0.19.8"
    assert {"accelerate", "peft", "datasets", "tokenizers", "alfworld"} <= set(wheels)
    assert not [w for w in wheels if w.startswith(("torch", "nvidia-", "triton", "vllm"))]
    # ALFWorld's PDDL games need TextWorld's planner (textworld[pddl]); what no step imports is left out
    assert wheels["fast-downward-textworld"] == "20.6.4" and "jericho" in wheels
    assert not {"spacy", "thinc", "blis", "hf-xet", "typer"} & set(wheels)


def test_wheel_list_leaves_out_what_the_node_has():
    """``--node_has`` drops the named packages and what only they need; what others need stays."""
    def listed(*extra: str) -> dict[str, str]:
        proc = subprocess.run([sys.executable, "scripts/gpu_smoke_checks.py", "wheels", *extra], cwd=REPO,
                              capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        return dict(line.split("==") for line in proc.stdout.split())

    full, lean = listed(), listed("--node_has", "pyarrow,pandas,numpy")
    assert {"pyarrow", "pandas", "numpy", "tzdata", "python-dateutil"} <= set(full)
    assert not {"pyarrow", "pandas", "numpy", "tzdata", "python-dateutil"} & set(lean)
    assert set(lean) < set(full) and all(full[k] == v for k, v in lean.items())
    assert {"datasets", "trl", "transformers", "deepspeed", "fsspec", "xxhash"} <= set(lean)
