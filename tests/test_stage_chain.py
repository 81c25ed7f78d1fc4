"""The README's stage commands, in the README's order, on a generated mini ALFWorld dataset laid out as
``steca.data.download`` lays out the authors' archives, with only DATA_ROOT, OUTPUT_ROOT and PROFILE=cpu set:
every stage finds its inputs where the previous stage wrote them (steca/stage_config.py) and names them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from steca.method.trajectories import split_expert
from steca.records import load_pairs, load_sft, load_steps
from steca.stage_config import STAGES, stage_config, stage_variables

REPO = Path(__file__).resolve().parents[1]

# the README's stages, in order (script, what the log must name as its input)
CHAIN = ["sft/my_sft.sh", "sampling/alfworld/expert_generate_response.sh", "sampling/alfworld/expert_mc_explore.sh",
         "sampling/alfworld/explore_generate_response.sh", "sampling/alfworld/explore_mc_explore.sh",
         "data_collection/data_collection.sh", "Reinfoced_train/steca_train.sh", "eval/my_eval_alfworld.sh"]


def _stage_env(data_root: Path, output_root: Path) -> dict[str, str]:
    """The caller's environment without any stage variable, plus the two roots and the CPU profile."""
    cfg = stage_config("alfworld")
    known = {n for s in STAGES for n in stage_variables(cfg, s)}
    env = {k: v for k, v in os.environ.items() if k not in known}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", DATA_ROOT=str(data_root), OUTPUT_ROOT=str(output_root),
               PROFILE="cpu")
    return env


def _sampling_summary(log: str) -> dict:
    """The summary line the sampling command line logs last (one part: PART_NUM is 1)."""
    marker = "steca.sampling.sampling_cli: {"
    line = [x for x in log.splitlines() if marker in x][-1]
    return json.loads(line[line.index(marker) + len(marker) - 1:])


@pytest.mark.slow(seconds=95)
def test_readme_stage_commands_chain_from_the_download_layout(tmp_path):
    gen = tmp_path / "generated"
    subprocess.run([sys.executable, "-m", "steca.generators.alfworld_games", "--output_dir", str(gen), "--n_train", "1",
                    "--n_seen", "1", "--n_unseen", "1", "--size", "tiny", "--instruction", "short", "--workers", "1",
                    "--no_progress"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True,
                   capture_output=True, timeout=600)
    data, out = tmp_path / "data", tmp_path / "outputs"
    (data / "alfworld").mkdir(parents=True)
    (data / "trajectories").mkdir()
    shutil.move(str(gen / "json_2.1.1"), data / "alfworld" / "json_2.1.1")
    shutil.move(str(gen / "sft_train.json"), data / "trajectories" / "alfworld_sft.json")
    cfg = stage_config("alfworld", "cpu", str(data), str(out))

    env = _stage_env(data, out)
    logs = {}
    for script in CHAIN:
        proc = subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        logs[script] = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{script} failed:\n{logs[script][-4000:]}"

    # 1. SFT: the bootstrapped model, trained on the downloaded SFT file
    assert (Path(cfg.sft.output_dir) / "config.json").exists()
    assert f"SFT of {cfg.sft.model_path} on 1 conversations of {cfg.data.sft_file}" in logs[CHAIN[0]]
    sft = load_sft(cfg.data.sft_file, strict=True).records

    # 2. sampling: every stage names its input and the SFT model; records cover every expert step
    s = cfg.sampling
    n_steps = len(split_expert(sft[0]).steps)
    for script, inp, output, model in ((CHAIN[1], s.sft_file, s.expert_steps, None),
                                       (CHAIN[2], s.expert_steps, s.expert_mc, s.model_path),
                                       (CHAIN[3], s.sft_file, s.explore_steps, s.model_path),
                                       (CHAIN[4], s.explore_steps, s.explore_mc, s.model_path)):
        summary = _sampling_summary(logs[script])
        assert (summary["input"], summary["model"], summary["output"].rsplit(".part", 1)[0]) == \
            (inp, model, output.rsplit(".jsonl", 1)[0]), script
        records = load_steps(output, strict=True).records
        assert sorted(r.iteration for r in records) == list(range(n_steps)), script
    assert all(r.agent_step_reward is not None for r in load_steps(s.expert_mc).records + load_steps(s.explore_mc).records)

    # 3. D_s, D_c, D_e from the Monte Carlo files; the merged file from the three sets
    c = cfg.collection
    for built in (c.d_s, c.d_c, c.d_e):
        summary = json.loads(Path(built).with_name(Path(built).stem + "_summary.json").read_text())
        assert summary["settings"]["inputs"]["sft"] == c.sft_file
        assert summary["settings"]["inputs"]["explore_steps"] == c.explore_mc
    merged = json.loads(Path(c.train_data).with_name(Path(c.train_data).stem + "_summary.json").read_text())
    assert merged["inputs"] == [c.d_s, c.d_c, c.d_e]
    pairs = load_pairs(c.train_data, strict=True).records
    assert len(pairs) == merged["pairs"] > 0

    # 4. reinforced training from the SFT model on the merged file
    t = cfg.train
    assert f"reinforced training of {t.model_path} on {len(pairs)} pairs of {t.train_data}" in logs[CHAIN[6]]
    assert (Path(t.output_dir) / "config.json").exists()

    # 5. evaluation of the STeCa model on seen and unseen
    for split in ("dev", "test"):
        summary = json.loads((Path(cfg.eval.output_dir) / split / "summary.json").read_text())
        assert summary["model"] == t.output_dir and summary["n_tasks"] == 1
