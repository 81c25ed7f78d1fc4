"""Python steps of scripts/gpu_smoke.sh.

    python scripts/gpu_smoke_checks.py hf --model DIR [--device cuda] [--dtype bfloat16]
        the hf backend: greedy twice equal, seeded sampling reproducible per row and independent of the
        batch, stop strings cut, a batch equal to its rows one at a time (greedy); exit 1 on a failure
    python scripts/gpu_smoke_checks.py model --sft_file F --out DIR [--size tiny]
        a small Llama-architecture chat model like Llama-2's layout: untied input/output embeddings,
        ``use_cache`` true (the project's bootstrap, then the output embedding made its own copy)
    python scripts/gpu_smoke_checks.py lora --run DIR --base DIR
        a LoRA run's output: every adapter weight the model expects is in DIR/adapter (none missing when
        peft loads it), its lora_B weights moved from their zero start, and the merged model in DIR differs
        from the base model exactly where the adapter applies; exit 1 on a failure, naming the saved keys
    python scripts/gpu_smoke_checks.py pairs --sft_file F --out FILE
        eight STeCa pairs from the first sixteen trajectories (for the reinforced and DPO steps)
    python scripts/gpu_smoke_checks.py wheels --lock requirements-lock.json [--node_has pyarrow,pandas]
        the packages a GPU node needs beyond its own torch (the closure of the smoke roots in the lock's
        GPU resolution, without torch, vLLM and the CUDA libraries), one ``name==version`` a line;
        ``--node_has`` leaves out packages the node already has (its own versions are used), with
        everything only they need
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("gpu_smoke")

# what the smoke steps import on the node (training, sampling, evaluation on ALFWorld); fast-downward-textworld
# is textworld's "pddl" extra (alfworld asks for textworld[pddl]; the lock keeps no extra of a dependency)
WHEEL_ROOTS = ("transformers", "tokenizers", "accelerate", "peft", "trl", "datasets", "deepspeed", "alfworld",
               "safetensors", "huggingface-hub", "numpy", "tqdm", "fast-downward-textworld")
# provided by the node's own torch install, or not needed there
WHEEL_EXCLUDE_PREFIXES = ("torch", "nvidia-", "triton", "cuda-", "vllm")
# declared requirements that no smoke step imports (traced with every step's modules on a CPU), left out with
# everything only they need: spacy (jericho's, for TextWorld's Z-machine games; ALFWorld's games are PDDL),
# hf-xet (downloads from the Hub's Xet storage; the node is offline), typer (the `transformers` command line).
# So the node installs the folder with --no-deps.
WHEEL_NOT_IMPORTED = ("spacy", "hf-xet", "typer")


def _conversation(i: int):
    from eval_agent.types import Message

    return [Message("user", f"You are in room {i}. Say which object you see, then 'Action:'."),
            Message("assistant", "OK"), Message("user", f"Task {i}: put a mug in the sink.")]


def check_hf(model: str, device: str, dtype: str) -> list[str]:
    """The hf backend checks; returns the failures (empty: all passed)."""
    from eval_agent.agents.hf import HFPolicy
    from eval_agent.agents.hf_memory import DEFAULT_MAX_BATCH_SIZE
    from eval_agent.agents.policy import SamplingParams

    failures = []
    policy = HFPolicy(model, device=device, dtype=dtype, max_batch_size=8)
    batch = [_conversation(i) for i in range(4)]
    greedy = SamplingParams(max_new_tokens=12)
    first, second = policy.generate(batch, greedy), policy.generate(batch, greedy)
    if first != second:
        failures.append("greedy: two calls differ")
    alone = [policy.generate([c], greedy)[0] for c in batch]
    if alone != first:
        failures.append(f"greedy: batched != one at a time ({sum(a != b for a, b in zip(alone, first))} rows)")
    seeded = [SamplingParams(temperature=1.0, max_new_tokens=12, seed=100 + i) for i in range(len(batch))]
    s1 = policy.generate(batch, seeded)
    s2 = policy.generate(list(reversed(batch)), list(reversed(seeded)))[::-1]
    if s1 != s2:
        failures.append("sampling: a row's sample depends on its batch")
    if len(set(s1)) < 2:
        failures.append("sampling: every row drew the same text")
    words = [t.split()[0] for t in first if t.split()]
    if words:
        stop = SamplingParams(max_new_tokens=12, stop=(words[0],))
        cut = policy.generate(batch[:1], stop)[0]
        if words[0] in cut:
            failures.append(f"stop string {words[0]!r} not cut: {cut!r}")
    # max_batch_size unset: on CUDA sized from the free memory (eval_agent/agents/hf_memory.py)
    sized = HFPolicy(model, device=device, dtype=dtype)
    rows = sized.chunk_rows(2048, 512)
    if not 1 <= rows <= DEFAULT_MAX_BATCH_SIZE:
        failures.append(f"rows per chunk sized from memory: {rows}")
    if sized.generate(batch, greedy) != first:
        failures.append("greedy: the memory-sized batch differs from max_batch_size=8")
    logger.info("hf on %s: greedy %r..., sampled %r..., %d rows per chunk sized from memory", policy.device,
                first[0][:40], s1[0][:40], rows)
    return failures


def check_lora(run: Path, base: Path) -> list[str]:
    """The checks of the ``lora`` command (module doc); returns the failures."""
    import warnings

    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    failures = []
    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    logger.info("%d tensors in the adapter file; first keys: %s", len(saved), sorted(saved)[:4])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(run / "adapter"))
    missing = [str(w.message)[:300] for w in caught if "missing adapter keys" in str(w.message)]
    if missing:
        failures.append(f"peft found adapter keys missing from the saved file (saved: {sorted(saved)[:4]}): {missing[0]}")
    lora_b = {k: v for k, v in peft_model.state_dict().items() if "lora_B" in k}
    if not lora_b or all(float(v.abs().sum()) == 0.0 for v in lora_b.values()):
        failures.append(f"every one of the {len(lora_b)} loaded lora_B weights is zero: the adapter is untrained")
    base_sd = AutoModelForCausalLM.from_pretrained(base).state_dict()
    merged_sd = AutoModelForCausalLM.from_pretrained(run).state_dict()
    changed = sorted(k for k in base_sd if not torch.equal(base_sd[k], merged_sd[k]))
    if not changed:
        failures.append("the merged model equals the base model")
    elif any(not k.endswith(("proj.weight",)) for k in changed):
        failures.append(f"the merge changed weights the adapter does not apply to: {changed[:4]}")
    logger.info("merged model: %d of %d weights differ from the base", len(changed), len(base_sd))
    return failures


def build_model(sft_file: Path, out: Path, size: str) -> Path:
    """Bootstrap a model, then untie its output embedding and keep ``use_cache`` true (Llama-2's layout)."""
    import torch
    from transformers import AutoModelForCausalLM

    from steca.training.bootstrap import bootstrap_model, sft_texts

    bootstrap_model(sft_texts(sft_file), out, size=size, seed=0)
    model = AutoModelForCausalLM.from_pretrained(out)
    model.config.tie_word_embeddings = False
    model.config.use_cache = True
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.save_pretrained(out)
    again = AutoModelForCausalLM.from_pretrained(out)
    assert again.lm_head.weight.data_ptr() != again.get_input_embeddings().weight.data_ptr()
    return out


def write_pairs(sft_file: Path, out: Path) -> Path:
    """Pair i: trajectory i's prompt and turns as chosen, trajectory i+8's turns as rejected, reward 1 + i/10."""
    data = json.loads(sft_file.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for i in range(8):
            c, other = data[i]["conversations"], data[i + 8]["conversations"]
            f.write(json.dumps({"id": data[i]["id"], "prompt": c[:3], "chosen": c[3:11], "rejected": other[3:9],
                                "reward": 1.0 + 0.1 * i}) + "\n")
    return out


def wheel_list(lock_path: Path, node_has: tuple[str, ...] = ()) -> list[str]:
    """``name==version`` of the closure of :data:`WHEEL_ROOTS` in the lock's GPU resolution (see module doc),
    without the packages in ``node_has`` and what only they need."""
    from packaging.requirements import Requirement

    lock = json.loads(lock_path.read_text())
    gpu = sorted(k for k in lock["resolutions"] if k.startswith("gpu-"))
    name = "gpu-py3.12" if "gpu-py3.12" in gpu else gpu[0]  # the node's Python where the lock has it
    packages = lock["resolutions"][name]["packages"]
    env = {"python_version": "3.12", "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}
    todo, seen = list(WHEEL_ROOTS), set()
    while todo:
        pkg = todo.pop()
        if (pkg in seen or pkg not in packages or pkg.startswith(WHEEL_EXCLUDE_PREFIXES) or pkg in WHEEL_NOT_IMPORTED
                or pkg in node_has):
            continue
        seen.add(pkg)
        for line in packages[pkg]["requires"]:
            req = Requirement(line)
            extras = packages[pkg]["extras"] or [""]
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in extras):
                todo.append(req.name.lower().replace("_", "-").replace(".", "-"))
    return [f"{p}=={packages[p]['version']}" for p in sorted(seen)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    hf = sub.add_parser("hf")
    hf.add_argument("--model", required=True)
    hf.add_argument("--device", default="cuda")
    hf.add_argument("--dtype", default="auto")
    model = sub.add_parser("model")
    model.add_argument("--sft_file", required=True)
    model.add_argument("--out", required=True)
    model.add_argument("--size", default="tiny")
    lora = sub.add_parser("lora")
    lora.add_argument("--run", required=True)
    lora.add_argument("--base", required=True)
    pairs = sub.add_parser("pairs")
    pairs.add_argument("--sft_file", required=True)
    pairs.add_argument("--out", required=True)
    wheels = sub.add_parser("wheels")
    wheels.add_argument("--lock", default=str(Path(__file__).resolve().parent.parent / "requirements-lock.json"))
    wheels.add_argument("--node_has", default="", help="comma-separated packages the node already has")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "wheels":
        node_has = tuple(n.strip().lower().replace("_", "-") for n in args.node_has.split(",") if n.strip())
        sys.stdout.write("\n".join(wheel_list(Path(args.lock), node_has)) + "\n")
        return 0
    if args.cmd == "model":
        build_model(Path(args.sft_file), Path(args.out), args.size)
        return 0
    if args.cmd == "pairs":
        write_pairs(Path(args.sft_file), Path(args.out))
        return 0
    if args.cmd == "lora":
        failures = check_lora(Path(args.run), Path(args.base))
    else:
        failures = check_hf(args.model, args.device, args.dtype)
    for f in failures:
        logger.error("FAIL %s", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
