"""The stage configuration: defaults that chain from two roots, overrides that carry what derives from them,
the shell form the stage scripts read, and the download layout it assumes."""
from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from steca.data.download import unpack_plain
from steca.stage_config import STAGES, shell_assignments, stage_config, stage_variables

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env", ["alfworld", "virtualhome"])
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_each_stage_reads_what_the_previous_one_writes(env, profile):
    cfg = stage_config(env, profile, data_root="D", output_root="O")
    assert cfg.data.env_data == f"D/{env}" and cfg.data.sft_file == f"D/trajectories/{env}_sft.json"
    assert cfg.sft.sft_data == cfg.data.sft_file == cfg.sampling.sft_file == cfg.collection.sft_file
    assert cfg.sampling.model_path == cfg.sft.output_dir == f"O/sft/{env}" == cfg.train.model_path
    assert (cfg.collection.expert_mc, cfg.collection.explore_mc) == (cfg.sampling.expert_mc, cfg.sampling.explore_mc)
    assert cfg.train.train_data == cfg.collection.train_data
    assert cfg.eval.model_path == cfg.train.output_dir == f"O/steca/{env}"
    assert cfg.eval.data_dir == cfg.sampling.env_data == cfg.data.env_data
    outputs = [cfg.sft.output_dir, cfg.sampling.expert_steps, cfg.sampling.expert_mc, cfg.sampling.explore_steps,
               cfg.sampling.explore_mc, cfg.collection.d_s, cfg.collection.d_c, cfg.collection.d_e,
               cfg.collection.train_data, cfg.train.output_dir, cfg.eval.output_dir]
    assert len(set(outputs)) == len(outputs) and all(o.startswith("O/") for o in outputs)


def test_profiles_differ_where_the_released_setting_is_a_gpu_one():
    cpu, gpu = stage_config("alfworld", "cpu"), stage_config("alfworld", "gpu")
    assert (gpu.sft.lr, gpu.sft.max_length, gpu.sft.bf16, gpu.train.lr) == (2e-5, 4096, True, 3e-6)
    assert (gpu.sampling.num_rollouts, gpu.sampling.mc_temperature, gpu.sampling.max_steps) == (5, 1.0, 40)
    assert gpu.sampling.backend == gpu.eval.agent_config == "vllm"
    assert cpu.sft.model_path == "outputs/bootstrap_nano" and cpu.sampling.backend == "hf"
    assert cpu.collection.reflector == "offline" and gpu.collection.reflector == "openai"


def test_an_override_moves_what_derives_from_it():
    cfg = stage_config("virtualhome", overrides={"OUT_DIR": "elsewhere", "NUM_ROLLOUTS": "7", "BF16": "true"})
    assert cfg.sampling.expert_mc == "elsewhere/expert_steps_mc.jsonl" and cfg.sampling.num_rollouts == 7
    assert cfg.sft.bf16 is True
    dpo = stage_config("alfworld", overrides={"VARIANT": "dpo", "MODEL_PATH": "m/sft_more"})
    assert dpo.train.output_dir == "outputs/dpo/alfworld" and dpo.train.beta == 0.1
    assert dpo.eval.output_dir == "outputs/eval/alfworld/sft_more"
    with pytest.raises(ValueError, match="NUM_ROLLOUTS='many'"):
        stage_config("alfworld", overrides={"NUM_ROLLOUTS": "many"})


def test_shell_form_sets_every_variable_of_the_stage(tmp_path):
    for stage in STAGES:
        names = set(stage_variables(stage_config("alfworld"), stage))
        script = shell_assignments("alfworld", stage, overrides={"SEED": "3"}) + "\n" + \
            "".join(f'echo "{n}=${{{n}}}"\n' for n in sorted(names))
        out = subprocess.run(["bash", "-c", "set -u\n" + script], capture_output=True, text=True, check=True).stdout
        values = dict(line.split("=", 1) for line in out.splitlines())
        assert set(values) == names and values.get("SEED", "3") == "3"


def test_stage_script_helper_keeps_what_the_script_set(tmp_path):
    script = (f'cd "{REPO}"; source scripts/stage_common.sh; OUT_DIR=runs/x; MAX_STEPS=; '
              'stage_defaults alfworld sampling; echo "$EXPLORE_MC $MAX_STEPS $MODEL_PATH"')
    env = {**os.environ, "PYTHONPATH": str(REPO), "OUTPUT_ROOT": "runs/o", "PROFILE": "gpu"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == ["runs/x/explore_steps_mc.jsonl", "40", "runs/o/sft/alfworld"]


def test_gpu_trainer_launch_takes_a_free_port_on_one_node_and_a_shared_one_on_several(tmp_path):
    """launch_trainer under PROFILE=gpu: on one node MAIN_PROCESS_PORT=auto (the default) gives each launch a port
    that is free, so trainings started side by side (the demo's gpu profile) do not collide on accelerate's fixed
    default; several nodes keep 29500, a port set by the user is kept. The ``accelerate`` found on PATH here is a
    stand-in that prints its arguments: the launch itself needs GPUs (scripts/gpu_smoke.sh runs it for real)."""
    import socket
    fake = tmp_path / "bin" / "accelerate"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\necho "$@"\n')
    fake.chmod(0o755)

    def port(**env: str) -> int:
        script = f'cd "{REPO}"; source scripts/stage_common.sh; PROFILE=gpu NUM_GPUS=1 launch_trainer entry.py --x 1'
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", **env})
        assert out.returncode == 0, out.stderr
        args = out.stdout.split()
        assert args[-3:] == ["entry.py", "--x", "1"] and args[args.index("--num_processes") + 1] == "1"
        return int(args[args.index("--main_process_port") + 1])

    held = socket.socket()  # accelerate's default port taken, as by a training already running
    try:
        held.bind(("127.0.0.1", 29500))
        held.listen()
    except OSError:
        pass  # something else holds it already
    try:
        for chosen in (port() for _ in range(3)):
            assert chosen != 29500
            with socket.socket() as s:  # free when chosen: it can be bound
                s.bind(("127.0.0.1", chosen))
    finally:
        held.close()
    assert port(NUM_MACHINES="2") == 29500 and port(MAIN_PROCESS_PORT="31234") == 31234


def test_download_unpacks_a_single_top_folder_where_the_configuration_looks(tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/alfworld_sft.json", "[]")
        zf.writestr("data/webshop_sft.json", "[]")
    unpack_plain(archive, tmp_path / "root", "trajectories")
    assert (tmp_path / "root" / "trajectories" / "alfworld_sft.json").read_text() == "[]"
    assert Path(stage_config("alfworld", data_root=str(tmp_path / "root")).data.sft_file).exists()
