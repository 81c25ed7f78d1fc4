"""The baselines' training on real tokenizers and tiny models: IPR's trainer loss against hand computation,
and each method's data builder feeding its stage script in a 2-process CPU run (torchrun, gloo) that saves
a model which reloads."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from training_fixtures import nano_model, rank_digests, weights_digest

from steca.records import load_sft, write_records
from steca.training.trainer_setup import RANK_DIGEST_ENV, load_tokenizer
from steca.training.ipr import IPRArguments, LevelCollator, _ipr_trainer_class, build_ipr_dataset
from steca.training.reference_logps import FILE_NAME, attach_reference_logps
from tests.method_fixtures import explored_step, expert_sft, expert_step
from tests.test_training import _grads, _hand_logp, _tiny_llama

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nano_dir(alfworld_sft_sample: Path, tmp_path_factory) -> Path:
    return nano_model(tmp_path_factory, alfworld_sft_sample)


def _ipr_file(tmp_path: Path, alfworld_sft_sample: Path) -> Path:
    recs = load_sft(alfworld_sft_sample, strict=True).records
    rows = []
    for i, level in enumerate(["outcome", "step", "sft"]):
        c = [m.to_dict() for m in recs[i].conversations]
        other = [m.to_dict() for m in recs[i + 5].conversations]
        cut = 3 if level != "step" else 5
        rows.append({"id": f"r{i}", "prompt": c[:cut], "chosen": c[cut:cut + 6],
                     "rejected": [] if level == "sft" else other[cut:cut + 4], "reward": 1.0, "level": level})
    p = tmp_path / "ipr.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_ipr_trainer_loss_and_grads_match_formula(nano_dir, alfworld_sft_sample, tmp_path, monkeypatch):
    """IPR's loss against the formula with a live reference model, then the same loss and gradients with the
    reference log-probabilities stored once (only for the outcome and step pairs) as a multi-process run uses."""
    from transformers import TrainingArguments

    tok = load_tokenizer(nano_dir)
    beta = 0.5
    data = _ipr_file(tmp_path, alfworld_sft_sample)
    ds = build_ipr_dataset(data, tok, IPRArguments(beta=beta, sft_weight=2.0), True)
    assert ds["level"] == [0, 1, 2] and ds["scale"] == [3.0, 3.0, 6.0]  # N / N_k, times lambda_sft = 2
    model, ref = _tiny_llama(len(tok), seed=1), _tiny_llama(len(tok), seed=2)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, remove_unused_columns=False)
    trainer = _ipr_trainer_class()(model=model, args=args, train_dataset=ds, processing_class=tok,
                                   data_collator=LevelCollator(tok.pad_token_id), beta=beta, ref_model=ref)
    batch = LevelCollator(tok.pad_token_id)([ds[i] for i in range(3)])
    model.train(False)
    loss = trainer.compute_loss(model, batch)

    terms = []
    for i in range(3):
        lp_c = _hand_logp(model, ds[i]["chosen_input_ids"], ds[i]["chosen_labels"])
        if ds[i]["level"] == 2:
            n = sum(1 for x in ds[i]["chosen_labels"][1:] if x != -100)
            terms.append(ds[i]["scale"] * -lp_c / n)
            continue
        lp_r = _hand_logp(model, ds[i]["rejected_input_ids"], ds[i]["rejected_labels"])
        with torch.no_grad():
            ref_c = _hand_logp(ref, ds[i]["chosen_input_ids"], ds[i]["chosen_labels"])
            ref_r = _hand_logp(ref, ds[i]["rejected_input_ids"], ds[i]["rejected_labels"])
        margin = (lp_c - ref_c) - (lp_r - ref_r)
        terms.append(ds[i]["scale"] * -torch.log(torch.sigmoid(beta * margin)))
    hand = torch.stack(terms).mean()
    assert torch.allclose(loss, hand, rtol=1e-4, atol=1e-3), (loss.item(), hand.item())
    live_grads = _grads(loss, model)
    for g1, g2 in zip(live_grads, _grads(hand, model)):
        assert torch.allclose(g1, g2, rtol=1e-3, atol=1e-4)
    assert math.isfinite(loss.item())

    # stored reference values: computed once for the outcome and step rows only, equal to the live forward
    file = tmp_path / FILE_NAME
    stored = attach_reference_logps(ds, data, "ref", file, lambda: ref, tok.pad_token_id)
    lines = [json.loads(line) for line in file.read_text().splitlines()]
    assert lines[0]["header"]["n_pairs"] == 2 and lines[0]["header"]["n_records"] == 3
    assert [r["index"] for r in lines[1:]] == [0, 1]  # the SFT record (row 2) has no stored value
    with torch.no_grad():
        for i in (0, 1):
            for side in ("chosen", "rejected"):
                want = _hand_logp(ref, ds[i][f"{side}_input_ids"], ds[i][f"{side}_labels"]).item()
                assert stored[i][f"ref_{side}_logps"] == pytest.approx(want, rel=1e-5)
    trainer.ref_model = None  # no reference model: the batch's stored values are all there is
    stored_batch = LevelCollator(tok.pad_token_id)([stored[i] for i in range(3)])
    stored_loss = trainer.compute_loss(model, stored_batch)
    assert torch.allclose(stored_loss, loss, rtol=1e-4, atol=1e-4), (stored_loss.item(), loss.item())
    for g1, g2 in zip(_grads(stored_loss, model), live_grads):
        assert torch.allclose(g1, g2, rtol=1e-3, atol=1e-4)
    # other data is refused naming the file; several processes never compute the values themselves
    with pytest.raises(ValueError, match=f"{FILE_NAME}.*'n_records'"):
        attach_reference_logps(ds.select([0, 1]), data, "ref", file, lambda: None, tok.pad_token_id)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="2 outcome and step pairs .of 3 IPR records.*reference_logps --ipr"):
        attach_reference_logps(ds, data, "ref", tmp_path / "missing.jsonl", lambda: None, tok.pad_token_id)


def test_ipr_file_without_level_is_an_error_naming_the_record(nano_dir, tmp_path):
    p = tmp_path / "bad.jsonl"
    conv = [m.to_dict() for m in expert_sft().conversations]
    p.write_text(json.dumps({"id": "x", "prompt": conv[:3], "chosen": conv[3:], "rejected": [], "reward": 1.0}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, record 0 \(id='x'\), field 'level'"):
        build_ipr_dataset(p, load_tokenizer(nano_dir), IPRArguments())


def _step_files(tmp_path: Path) -> dict[str, str]:
    """Two tasks from the hand-built fixtures: t1's exploration from the start fails, t2's succeeds."""
    write_records(tmp_path / "sft.json", [expert_sft("t1"), expert_sft("t2")])
    write_records(tmp_path / "expert.jsonl", [expert_step(t, r, k) for k in ("t1", "t2")
                                              for t, r in enumerate([0.2, 0.4, 0.6, 0.8, 1.0])])
    write_records(tmp_path / "explore.jsonl", [explored_step(0, "look", 0.0, 0.0, "t1"),
                                               explored_step(2, "go to shelf 1", 0.1, 0.0, "t1"),
                                               explored_step(0, "go to desk 1", 1.0, 1.0, "t2")])
    return {"--sft": str(tmp_path / "sft.json"), "--expert_steps": str(tmp_path / "expert.jsonl"),
            "--explore_steps": str(tmp_path / "explore.jsonl")}


def _assert_stored_reference_is_start_model(data: Path, model_dir: Path, file: Path) -> None:
    """``file`` holds the start model's log-probabilities of ``data``'s outcome and step pairs, row by row."""
    from transformers import AutoModelForCausalLM

    from steca.training.reference_logps import compute_reference_logps, dataset_fingerprint, pair_rows, read_reference_logps

    tok = load_tokenizer(model_dir)
    ds = build_ipr_dataset(data, tok, IPRArguments())
    rows = pair_rows(ds)
    stored = read_reference_logps(file, dataset_fingerprint(data, ds), rows)
    want = compute_reference_logps(AutoModelForCausalLM.from_pretrained(model_dir), ds.select(rows), tok.pad_token_id)
    assert torch.allclose(torch.tensor(stored), torch.tensor(want), atol=1e-4)


def _build_baseline_file(method: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """data_collection/data_baselines.py METHOD on the hand-made step files: the file, and the environment used."""
    args = [a for kv in _step_files(tmp_path).items() for a in kv]
    data = tmp_path / f"{method}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["python", str(REPO / "data_collection/data_baselines.py"), method, *args, "--output", str(data)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / f"{method}_summary.json").read_text())
    assert summary["records"] == {"rft": 3, "eto": 1, "ipr": 4}[method], summary  # ipr: outcome, step t1:2, 2 sft
    return data, env


def test_rft_builder_writes_the_sft_file_the_sft_stage_reads(tmp_path):
    """RFT's file is an SFT file of the successful trajectories: sft/my_sft.sh reads it as it reads the expert
    file, and that script's two-process run is test_training_e2e's (a second one here would add nothing)."""
    data, _ = _build_baseline_file("rft", tmp_path)
    records = load_sft(data, strict=True).records
    assert [r.id for r in records] == ["t1", "t2", "t2_rft_0"]  # the expert trajectories, then t2's success
    acts = [" | ".join(m.content for m in r.conversations if m.role == "assistant") for r in records]
    assert "my own idea" in acts[2] and "my own idea" not in acts[1]  # the explored turns
    assert records[2].game_file == records[1].game_file


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize("method", ["eto", "ipr"])
def test_builder_then_two_process_stage_script_saves_loadable_model(method, nano_dir, tmp_path):
    """data_collection/data_baselines.py writes the method's file; its stage script trains on it with NPROC=2."""
    from transformers import AutoModelForCausalLM

    data, env = _build_baseline_file(method, tmp_path)
    out = tmp_path / "model"
    env.update(NPROC="2", MODEL_PATH=str(nano_dir), OUTPUT_DIR=str(out), **{RANK_DIGEST_ENV: str(tmp_path / "ranks")})
    extra = ["--max_steps", "2", "--per_device_train_batch_size", "1", "--save_steps", "2", "--logging_steps", "1",
             "--disable_tqdm", "true", "--use_cpu", "true"]
    script, env["TRAIN_DATA"], env["VARIANT"] = "Reinfoced_train/steca_train.sh", str(data), method
    proc = subprocess.run(["bash", str(REPO / script), *extra], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count(" done: 2 steps") == 2, proc.stderr[-4000:]  # one line per rank
    if method == "ipr":  # the script computed the pairs' reference values beforehand; both ranks read them
        assert proc.stderr.count("reference log-probabilities of 2 outcome and step pairs (of 4 IPR records) from") == 2
        _assert_stored_reference_is_start_model(data, nano_dir, out / FILE_NAME)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(load_tokenizer(out))
    # both ranks end with the same weights, the saved ones, which training moved away from the start
    ranks = rank_digests(tmp_path / "ranks", 2)
    assert ranks[0] == ranks[1] == weights_digest(out, tmp_path / "saved")
    assert ranks[0] != weights_digest(nano_dir, tmp_path / "start")


@pytest.mark.slow(seconds=30)
@pytest.mark.parametrize("method", ["ipr"])
def test_second_iteration_explores_with_the_first_agent_and_trains_from_it(method, nano_dir, alfworld_data,
                                                                          alfworld_sft_sample, tmp_path):
    """Reinfoced_train/iterate_baseline.sh on one real ALFWorld task: the nano model stands for iteration 1's
    agent; iteration 2 explores with it in the engine, rebuilds the method's file and trains a model that reloads.
    IPR only: its iteration runs the steps ETO's runs (exploration with the previous agent, the builder, training
    from the previous agent) plus the Monte Carlo step rewards; ETO's builder and training on its file are
    test_builder_then_two_process_stage_script_saves_loadable_model[eto]."""
    from transformers import AutoModelForCausalLM

    write_records(tmp_path / "sft.json", load_sft(alfworld_sft_sample, strict=True).records[:1])
    work = tmp_path / "iterations"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "METHOD": method, "ITERATIONS": "2",
           "ENV_NAME": "alfworld", "FIRST_MODEL": str(nano_dir), "SFT_FILE": str(tmp_path / "sft.json"),
           "WORK_DIR": str(work), "ENV_DATA": str(alfworld_data), "SPLIT": "train", "BACKEND": "hf",
           "MAX_STEPS": "4", "MAX_NEW_TOKENS": "8", "NUM_ROLLOUTS": "1"}
    if method == "ipr":  # expert step rewards of stage 2 (reused by every iteration): hand-set here
        write_records(tmp_path / "expert_mc.jsonl", [expert_step(t, 1.0, "alfworld_0") for t in range(5)])
        env["EXPERT_STEPS"] = str(tmp_path / "expert_mc.jsonl")
    proc = subprocess.run(["bash", str(REPO / "Reinfoced_train/iterate_baseline.sh"), "--max_steps", "1",
                           "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((work / "iter2" / f"{method}_summary.json").read_text())
    assert summary["counts"]["rule:exploration from t=0 failed: R_expert > R_explore"] == 1  # the nano agent fails
    assert AutoModelForCausalLM.from_pretrained(work / "iter2" / "model").config.vocab_size == len(load_tokenizer(work / "iter2" / "model"))
    again = subprocess.run(["bash", str(REPO / "Reinfoced_train/iterate_baseline.sh")], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "exists, skipped" in again.stdout
