"""Reliability, bad input: numbers checked at the door, unreadable files refused, nothing trained on NaN.

Each test reproduces one failure of the reliability issue (numbers in its list): before the fix
the stage accepted the input and exited 0.
"""
from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from method_fixtures import expert_rewards, expert_sft, explored_fixture
from training_fixtures import nano_model

from steca.collection.collect_cli import main as collect_main
from steca.records import (InvalidNumberError, RecordError, load_pairs, load_sft, load_steps, write_records)
from steca.sampling.sampling_cli import main as sampling_main

REPO = Path(__file__).resolve().parents[1]


def _pairs(path: Path, rewards: list[object]) -> Path:
    """A pair file (JSONL) with one pair per reward, written as given (NaN and Infinity as JSON allows)."""
    with path.open("w") as f:
        for i, w in enumerate(rewards):
            conv = [{"role": "user", "content": f"task {i}"}, {"role": "assistant", "content": "Action: look"}]
            f.write(json.dumps({"id": f"p{i}", "prompt": conv[:1], "chosen": conv[1:], "rejected": conv[1:],
                                "reward": w}) + "\n")
    return path


# ------------------------------------------------------------------ 1. numbers at the door
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_pair_reward_must_be_finite_and_not_negative(tmp_path: Path, bad: float) -> None:
    p = _pairs(tmp_path / "pairs.jsonl", [1.0, bad, 1.01])
    with pytest.raises(InvalidNumberError) as e:
        load_pairs(p)
    msg = str(e.value)
    assert str(p) in msg and "record 1 (id='p1')" in msg and "field 'reward'" in msg and "--skip_invalid" in msg
    kept = load_pairs(p, skip_invalid=True)
    assert [r.id for r in kept.records] == ["p0", "p2"] and len(kept.errors) == 1


@pytest.mark.parametrize("field,value", [("agent_step_reward", math.nan), ("agent_step_reward", 1.5),
                                         ("monte_carlo_step_reward", math.nan),
                                         ("agent_final_reward", math.inf), ("mc_outcomes", [1.0, math.nan])])
def test_step_rewards_must_be_finite_and_in_unit_range(tmp_path: Path, field: str, value: object) -> None:
    recs = [r.to_dict() for r in expert_rewards()]
    recs[2][field] = value
    p = tmp_path / "steps.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(InvalidNumberError, match=rf"record 2 \(id='t1'\), field '{field}"):
        load_steps(p)
    assert len(load_steps(p, skip_invalid=True).records) == 4


def test_training_on_a_nan_reward_exits_nonzero_naming_the_record(tmp_path: Path, tmp_path_factory,
                                                                   alfworld_sft_sample: Path) -> None:
    """Failure 1: a NaN reward trained a model whose weights were all NaN, and the run exited 0."""
    model = nano_model(tmp_path_factory, alfworld_sft_sample)
    pairs = _pairs(tmp_path / "pairs.jsonl", [1.0, math.nan, 1.0])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "Reinfoced_train/steca_train.py", "--model_name_or_path", str(model),
                           "--data_path", str(pairs), "--output_dir", str(out), "--max_steps", "1",
                           "--per_device_train_batch_size", "2", "--use_cpu", "true"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert f"{pairs}, record 1 (id='p1'), field 'reward'" in proc.stderr
    assert not (out / "model.safetensors").exists()


def test_training_refuses_to_save_nonfinite_weights(tmp_path: Path, tmp_path_factory,
                                                     alfworld_sft_sample: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from steca.training.trainer_setup import NonFiniteWeightsError, save_final

    src = nano_model(tmp_path_factory, alfworld_sft_sample)
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    out = tmp_path / "out"
    trainer = Trainer(model=model, args=TrainingArguments(str(out), report_to="none", use_cpu=True))
    with pytest.raises(NonFiniteWeightsError, match="non-finite weights"):
        save_final(trainer, AutoTokenizer.from_pretrained(src), out)
    assert not (out / "model.safetensors").exists()


# ------------------------------------------------------------------ 2. input that yields nothing
BAD_FILES = {
    "empty": (b"", "the file is empty"),
    "whitespace": (b"\n  \n", "only whitespace"),
    "truncated": (b'[{"id": "a", "conversations": [', "not valid JSON"),
    "object": (b'{\n "data": [\n  {"id": "a"}\n ]\n}\n', "one JSON object"),
    "latin1": ('[{"id": "caf\u00e9"}]'.encode("latin-1"), "not UTF-8"),
    "all_bad_lines": (b'{"id": 1}\n{"id": 2}\n', "no usable record"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("loader", [load_sft, load_steps, load_pairs])
def test_unreadable_files_are_errors_naming_the_file(tmp_path: Path, kind: str, loader) -> None:
    data, problem = BAD_FILES[kind]
    p = tmp_path / f"{kind}.json"
    p.write_bytes(data)
    with pytest.raises(RecordError, match=problem) as e:
        loader(p)
    assert str(p) in str(e.value)


def test_a_byte_order_mark_is_an_error_naming_the_file_with_a_hint(tmp_path: Path) -> None:
    """Failure 4: a UTF-8 BOM was accepted silently; now it is refused like any other encoding problem."""
    plain = tmp_path / "plain.json"
    write_records(plain, [expert_sft()])
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    for loader in (load_sft, load_steps, load_pairs):
        with pytest.raises(RecordError, match="byte-order mark") as e:
            loader(bom)
        assert str(bom) in str(e.value) and "sed -i" in str(e.value)
    subprocess.run(["sed", "-i", "1s/^\\xEF\\xBB\\xBF//", str(bom)], check=True)  # the hint's command
    assert load_sft(bom, strict=True).records == load_sft(plain, strict=True).records


def _other_readers() -> dict:
    """The stage inputs read outside the record loaders, each with a reader taking the file's path."""
    from eval_agent.envs.virtualhome.task_files import load_tasks
    from eval_agent.prompts import example_from_file, instruction_from_sft
    from steca.method.action_pairs import alfworld_actions, virtualhome_actions
    from steca.training.bootstrap import texts_from_file

    return {"eval/sampling --sft_file (instruction)": instruction_from_sft, "example file": example_from_file,
            "VirtualHome task file": load_tasks, "bootstrap --sft_file": lambda p: list(texts_from_file(p)),
            "action pairs --sft_file": alfworld_actions, "action pairs --task_file": virtualhome_actions}


@pytest.mark.parametrize("content,problem", [(b"\xef\xbb\xbf[]", "byte-order mark"),
                                             ('[{"id": "caf\u00e9"}]'.encode("latin-1"), "not UTF-8")])
def test_every_other_input_reader_refuses_a_bom_and_other_encodings_naming_the_file(tmp_path: Path, content: bytes,
                                                                                 problem: str) -> None:
    from eval_agent.storage import UnreadableTextError

    p = tmp_path / "input.json"
    p.write_bytes(content)
    for what, reader in _other_readers().items():
        with pytest.raises(UnreadableTextError, match=problem) as e:
            reader(p)
        assert str(p) in str(e.value), what


def test_an_evaluation_refuses_a_task_file_with_a_bom(virtualhome_data: Path, tmp_path: Path) -> None:
    """Before: the first task's line failed to parse and the task was counted as unplayable."""
    from eval_agent.main import main as eval_main
    from eval_agent.storage import UnreadableTextError

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_bytes(b"\xef\xbb\xbf" + (virtualhome_data / "vh_seen_test.jsonl").read_bytes())
    with pytest.raises(UnreadableTextError, match=f"{tasks}: starts with a UTF-8 byte-order mark"):
        eval_main(["--exp_config", "virtualhome", "--split", "dev", "--agent_config", "expert", "--data_dir",
                   str(virtualhome_data), "--test_path", str(tasks), "--num_workers", "0", "--skip_invalid",
                   "--output_path", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "summary.json").exists()


def test_bad_record_warnings_are_summarised(tmp_path: Path, caplog) -> None:
    p = tmp_path / "steps.jsonl"
    p.write_text(json.dumps(expert_rewards()[0].to_dict()) + "\n" + "".join('{"id": "x"}\n' for _ in range(50)))
    with caplog.at_level(logging.WARNING):
        res = load_steps(p)
    assert len(res.records) == 1 and len(res.errors) == 50
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "50 of 51 record(s) skipped" in warnings[0].getMessage()
    assert "and 47 more" in warnings[0].getMessage()


@pytest.mark.parametrize("stage", ["expert_steps", "explore_steps", "mc"])
@pytest.mark.parametrize("content", [b"", b"[]", b'{\n "a": 1\n}', b'\xef\xbb\xbf[{"id": "a"}]'])
def test_sampling_stages_refuse_inputs_that_yield_nothing(tmp_path: Path, stage: str, content: bytes) -> None:
    """Failure 4: an empty step file into ``mc`` or the explore scripts gave exit 0 and an empty output."""
    src = tmp_path / "input.json"
    src.write_bytes(content)
    out = tmp_path / "out.jsonl"
    flag = "--steps" if stage == "mc" else "--sft"
    with pytest.raises(RecordError) as e:
        sampling_main([stage, flag, str(src), "--output", str(out), "--model_path", "unused-model-dir"])
    assert str(src) in str(e.value)
    assert not out.exists()


def test_sampling_entry_point_exits_nonzero_on_an_empty_file(tmp_path: Path) -> None:
    src = tmp_path / "steps.jsonl"
    src.write_bytes(b"")
    proc = subprocess.run([sys.executable, "sampling/run_sampling.py", "mc", "--steps", str(src), "--output",
                           str(tmp_path / "o.jsonl"), "--model_path", "x"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and f"{src}: the file is empty" in proc.stderr


def _collect_inputs(tmp_path: Path, expert: list[dict] | None = None) -> list[str]:
    write_records(tmp_path / "sft.json", [expert_sft()])
    rows = expert if expert is not None else [r.to_dict() for r in expert_rewards()]
    (tmp_path / "expert.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_records(tmp_path / "explore.jsonl", list(explored_fixture().values()))
    return ["--sft", str(tmp_path / "sft.json"), "--expert_steps", str(tmp_path / "expert.jsonl"),
            "--explore_steps", str(tmp_path / "explore.jsonl"), "--log_level", "WARNING"]


def test_data_collection_refuses_nan_step_rewards(tmp_path: Path) -> None:
    """Failure 9: NaN step rewards crashed data collection in the histogram after writing ``[]``."""
    rows = [r.to_dict() for r in expert_rewards()]
    rows[1]["monte_carlo_step_reward"] = math.nan
    args = _collect_inputs(tmp_path, rows)
    out = tmp_path / "run" / "cali.json"
    with pytest.raises(InvalidNumberError, match="record 1 \\(id='t1'\\), field 'monte_carlo_step_reward'"):
        collect_main("calibrated", "alfworld", args + ["--output", str(out)])
    assert not out.exists()
    summary = collect_main("calibrated", "alfworld", args + ["--output", str(out), "--skip_invalid"])
    assert out.exists() and summary["invalid_input_records"]


def test_data_collection_refuses_step_records_without_rewards(tmp_path: Path) -> None:
    """Failure 9: missing or null rewards gave 0 pairs and exit 0, the reason only in a summary file."""
    rows = [r.to_dict() for r in expert_rewards()]
    for r in rows:
        r["monte_carlo_step_reward"] = None
    args = _collect_inputs(tmp_path, rows)
    with pytest.raises(RecordError, match="field 'monte_carlo_step_reward': missing or null: run the Monte Carlo stage"):
        collect_main("expert", "alfworld", args + ["--output", str(tmp_path / "expert_set.json")])


def test_merge_of_inputs_without_pairs_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty_set.json"
    write_records(empty, [])
    with pytest.raises(RecordError, match="no training pair in any input"):
        collect_main("merge", "alfworld", [str(empty), "--output", str(tmp_path / "train.json")])


# ------------------------------------------------------------------ 11. the lower ones
def test_data_check_learns_an_unwritable_report_path_before_the_replay(alfworld_sft_sample: Path,
                                                                       tmp_path: Path) -> None:
    from steca.data.datacheck import main as datacheck_main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    # the data dir does not exist: a replay started first would fail on it instead
    with pytest.raises(OSError, match="cannot write the output here"):
        datacheck_main(["--sft_file", str(alfworld_sft_sample), "--data_dir", str(tmp_path / "missing"),
                        "--report", str(blocker / "report.jsonl")])


@pytest.mark.parametrize("content", [b"", b"[]", "\u00e9t\u00e9".encode("latin-1"), b"\xef\xbb\xbf[]"])
def test_data_check_refuses_an_input_that_yields_nothing(alfworld_data: Path, tmp_path: Path, content: bytes) -> None:
    from steca.data.datacheck import main as datacheck_main

    src = tmp_path / "sft.json"
    src.write_bytes(content)
    with pytest.raises(RecordError) as e:
        datacheck_main(["--sft_file", str(src), "--data_dir", str(alfworld_data), "--num_workers", "1"])
    assert str(src) in str(e.value)


def test_a_task_with_an_unknown_scene_is_not_left_out_of_the_success_rate(virtualhome_data: Path,
                                                                          tmp_path: Path) -> None:
    """Failure 11: a VirtualHome task with an unknown scene was dropped and the rate computed over the rest."""
    from eval_agent.main import main as eval_main

    first = (virtualhome_data / "vh_seen_test.jsonl").read_text().splitlines()[0]
    unknown = first.replace("TrimmedTestScene", "TrimmedTestScene9", 1).replace('"id": "', '"id": "x', 1)
    assert unknown != first
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(first + "\n" + unknown + "\n")
    args = ["--exp_config", "virtualhome", "--split", "dev", "--agent_config", "expert", "--data_dir",
            str(virtualhome_data), "--test_path", str(tasks), "--num_workers", "0", "--output_path", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="1 task\\(s\\) of the task file cannot be played"):
        eval_main(args)
    summary = eval_main(args + ["--skip_invalid"])
    assert summary["n_tasks"] == 1 and len(summary["invalid_tasks_skipped"]) == 1
    assert "unknown scene" in summary["invalid_tasks_skipped"][0]
