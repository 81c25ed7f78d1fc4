"""Reliability of training: a checkpoint torn by a crash is skipped (failure 7), a huge record costs
bounded memory (failure 8). Real trainers on a nano model bootstrapped from the shared trajectories."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from training_fixtures import nano_model

from steca.records import MAX_RECORD_CHARS, RecordError, load_sft
from steca.training.chat import encode_chat
from steca.training.trainer_setup import DataArguments, ModelArguments, checkpoint_problem, load_tokenizer, resolve_resume
from steca.training.sft import encode_truncated, train_sft

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nano_dir(alfworld_sft_sample: Path, tmp_path_factory) -> Path:
    return nano_model(tmp_path_factory, alfworld_sft_sample)


@pytest.fixture(scope="module")
def sft_small(alfworld_sft_sample: Path, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "sft8.json"
    p.write_text(json.dumps(json.loads(alfworld_sft_sample.read_text())[:8]))
    return p


def _config(out: Path, max_steps: int):
    from trl import SFTConfig

    return SFTConfig(output_dir=str(out), per_device_train_batch_size=1, learning_rate=1e-3, max_length=1024,
                     report_to="none", bf16=False, gradient_checkpointing=False, use_cpu=True, logging_steps=1,
                     save_steps=1, save_total_limit=3, disable_tqdm=True, seed=0, max_steps=max_steps)


def _first_step_recorder(seen: list[int]):
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append(state.global_step)

    return Recorder()


def test_a_torn_newest_checkpoint_is_skipped(nano_dir: Path, sft_small: Path, tmp_path: Path, caplog) -> None:
    """A crash while saving ``checkpoint-N`` used to block every rerun, the previous checkpoint intact."""
    out = tmp_path / "sft"
    train_sft(ModelArguments(str(nano_dir)), DataArguments(str(sft_small)), _config(out, 2))
    assert checkpoint_problem(out / "checkpoint-1") is None and checkpoint_problem(out / "checkpoint-2") is None
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # the crash, mid-write
    assert "model.safetensors: incomplete" in checkpoint_problem(out / "checkpoint-2")
    with caplog.at_level(logging.WARNING):
        assert resolve_resume("auto", out) == str(out / "checkpoint-1")
    assert "skipping checkpoint" in caplog.text and "checkpoint-2" in caplog.text
    seen: list[int] = []
    res = train_sft(ModelArguments(str(nano_dir)), DataArguments(str(sft_small)), _config(out, 3),
                    callbacks=[_first_step_recorder(seen)])
    assert seen[0] == 1 and res.global_step == 3  # continued after checkpoint-1
    assert checkpoint_problem(out / "checkpoint-3") is None


@pytest.mark.parametrize("tear", ["no_state", "bad_state", "cut_optimizer"])
def test_what_a_crash_leaves_is_recognised(nano_dir: Path, sft_small: Path, tmp_path: Path, tear: str) -> None:
    out = tmp_path / "sft"
    train_sft(ModelArguments(str(nano_dir)), DataArguments(str(sft_small)), _config(out, 1))
    ckpt = out / "checkpoint-1"
    if tear == "no_state":
        (ckpt / "trainer_state.json").unlink()
    elif tear == "bad_state":
        (ckpt / "trainer_state.json").write_text('{"global_step": 1, "log_hist')
    else:
        opt = ckpt / "optimizer.pt"
        opt.write_bytes(opt.read_bytes()[:100])
    assert checkpoint_problem(ckpt) is not None
    assert resolve_resume("auto", out) is None


def test_the_character_cut_keeps_the_tokens_of_the_whole_conversation(nano_dir: Path, alfworld_sft_sample: Path) -> None:
    tok = load_tokenizer(nano_dir)
    rec = load_sft(alfworld_sft_sample, strict=True).records[0]
    long = rec.conversations[:2] + rec.conversations[2:] * 40  # ~40 trajectories long
    full = encode_chat(tok, long)
    for max_length in (64, 300, 2000):
        enc = encode_truncated(tok, long, max_length)
        assert enc.input_ids == full.input_ids[:max_length] and enc.labels == full.labels[:max_length]
    short = encode_truncated(tok, rec.conversations, 100_000)
    assert short.input_ids == encode_chat(tok, rec.conversations).input_ids


def _huge_sft_file(path: Path, sample: Path, n_chars: int) -> Path:
    data = json.loads(sample.read_text())[:4]
    huge = json.loads(json.dumps(data[0]))
    huge["id"] = "huge"
    huge["conversations"][3]["value" if "value" in huge["conversations"][3] else "content"] = "a b " * (n_chars // 4)
    data.insert(1, huge)
    path.write_text(json.dumps(data))
    return path


def test_a_50mb_record_is_refused_with_bounded_memory(nano_dir: Path, alfworld_sft_sample: Path,
                                                      tmp_path: Path) -> None:
    """SFT on a 52 MB single-line record used to peak at 14.5 GB (the whole text was tokenised)."""
    data = _huge_sft_file(tmp_path / "huge.json", alfworld_sft_sample, 50_000_000)
    with pytest.raises(RecordError, match=r"record 1 \(id='huge'\).*over the limit"):
        load_sft(data, strict=True)
    cmd = [sys.executable, "-m", "steca.training.sft", "--model_name_or_path", str(nano_dir), "--data_path",
           str(data), "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--max_length", "1024",
           "--per_device_train_batch_size", "1", "--use_cpu", "true", "--save_strategy", "no"]
    # a fresh parent process, so that the peak memory measured is this training run's alone
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(r.stderr); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=REPO, capture_output=True, text=True, timeout=900)
    rc, max_rss_kb = map(int, proc.stdout.split())
    assert rc == 0, proc.stderr[-3000:]
    assert "id='huge'" in proc.stderr and str(MAX_RECORD_CHARS) in proc.stderr
    assert max_rss_kb < 2 * 1024 * 1024  # under 2 GB


def test_a_long_record_under_the_limit_trains_within_bounded_memory(nano_dir: Path, alfworld_sft_sample: Path,
                                                                    tmp_path: Path) -> None:
    data = _huge_sft_file(tmp_path / "long.json", alfworld_sft_sample, MAX_RECORD_CHARS - 100_000)
    cmd = [sys.executable, "-m", "steca.training.sft", "--model_name_or_path", str(nano_dir), "--data_path",
           str(data), "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--max_length", "1024",
           "--per_device_train_batch_size", "1", "--use_cpu", "true", "--save_strategy", "no"]
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(r.stderr); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=REPO, capture_output=True, text=True, timeout=900)
    rc, max_rss_kb = map(int, proc.stdout.split())
    assert rc == 0, proc.stderr[-3000:]
    assert " on 5 conversations" in proc.stderr
    assert max_rss_kb < 2 * 1024 * 1024
