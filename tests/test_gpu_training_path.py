"""What the GPU path needs from training, checked on CPU: no KV cache in training forwards (use_cache true
in the config, activation checkpointing on), reference log-probabilities computed once and the same on
every rank, LoRA saved and merged after a 2-process run, trl's fast path equal to its public-API
fallback, and the GPUs each sampling part is given."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from training_fixtures import nano_model, rank_digests, weights_digest, write_small_pairs

from steca.training.trainer_setup import (RANK_DIGEST_ENV, DataArguments, ModelArguments, load_model, load_tokenizer,
                                        save_final)
from steca.training.reference_logps import (FILE_NAME, attach_reference_logps, compute_reference_logps,
                                            read_reference_logps)
from steca.training.reinforced import build_pair_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nano_dir(alfworld_sft_sample: Path, tmp_path_factory) -> Path:
    return nano_model(tmp_path_factory, alfworld_sft_sample)


@pytest.fixture(scope="module")
def pairs(alfworld_sft_sample: Path, tmp_path_factory) -> Path:
    return write_small_pairs(alfworld_sft_sample, tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


def _cache_recorder(seen: list):
    """A callback hooking the trained model: records, per training forward, whether it returned a KV cache."""
    from transformers import TrainerCallback

    class Hook(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            model.register_forward_hook(lambda m, i, out: seen.append(getattr(out, "past_key_values", None) is not None))

    return Hook()


@pytest.mark.parametrize("variant", ["reinforced", "dpo_trl", "dpo_public"])
def test_training_builds_no_kv_cache_with_use_cache_true_and_checkpointing(variant, nano_dir, pairs, tmp_path):
    from transformers import AutoConfig, TrainingArguments
    from trl import DPOConfig

    assert AutoConfig.from_pretrained(nano_dir).use_cache  # the start model asks for a cache, like Llama-2
    out = tmp_path / variant
    common = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, report_to="none", use_cpu=True,
                  gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
                  save_strategy="no", disable_tqdm=True)
    seen: list[bool] = []
    if variant == "reinforced":
        from steca.training.reinforced import ReinforcedArguments, train_reinforced

        res = train_reinforced(ModelArguments(str(nano_dir)), DataArguments(str(pairs)),
                               ReinforcedArguments(beta=0.1, max_prompt_length=64, max_target_length=96),
                               TrainingArguments(**common), callbacks=[_cache_recorder(seen)])
    else:
        from steca.training import dpo

        tok = load_tokenizer(nano_dir)
        ds = build_pair_dataset(pairs, tok, 64, 96, with_rejected=True)
        ds = attach_reference_logps(ds, pairs, nano_dir, out / FILE_NAME, lambda: load_model(ModelArguments(str(nano_dir))),
                                    tok.pad_token_id)
        cfg = DPOConfig(**common, beta=0.1, max_length=None, bf16=False)
        trainer = dpo.make_dpo_trainer(load_model(ModelArguments(str(nano_dir))), tok, ds, cfg,
                                       callbacks=[_cache_recorder(seen)], fast=variant == "dpo_trl")
        trainer.train()
        res = save_final(trainer, tok, out)
    assert seen and not any(seen), f"{sum(seen)} of {len(seen)} training forwards built a KV cache"
    saved = res if isinstance(res, Path) else res.output_dir
    assert AutoConfig.from_pretrained(saved).use_cache  # the saved model generates with its cache again


def test_reference_logps_are_the_frozen_start_model_and_refused_for_other_data(nano_dir, pairs, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from steca.training.losses import sequence_logprobs
    from steca.training.reinforced import PairCollator

    tok = load_tokenizer(nano_dir)
    ds = build_pair_dataset(pairs, tok, 64, 96, with_rejected=True)
    file = tmp_path / FILE_NAME
    with_ref = attach_reference_logps(ds, pairs, nano_dir, file, lambda: load_model(ModelArguments(str(nano_dir))),
                                      tok.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(nano_dir).eval()
    batch = PairCollator(tok.pad_token_id)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        want = sequence_logprobs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                 batch["labels"])
    got = torch.tensor(list(with_ref["ref_chosen_logps"]) + list(with_ref["ref_rejected_logps"]))
    assert torch.allclose(got, want, atol=1e-3)
    # the stored file is read back, not recomputed: a model that cannot load is never asked for
    again = attach_reference_logps(ds, pairs, nano_dir, file, lambda: pytest.fail("recomputed"), tok.pad_token_id)
    assert list(again["ref_chosen_logps"]) == list(with_ref["ref_chosen_logps"])
    # other truncation -> other token lengths -> refused, naming the file
    shorter = build_pair_dataset(pairs, tok, 32, 64, with_rejected=True)
    with pytest.raises(ValueError, match=FILE_NAME):
        attach_reference_logps(shorter, pairs, nano_dir, file, lambda: None, tok.pad_token_id)
    # the start model trained again into the same folder (one weight changed) -> refused, naming the field
    retrained = tmp_path / "retrained"
    shutil.copytree(nano_dir, retrained)  # a copy is the same model: accepted
    same = attach_reference_logps(ds, pairs, retrained, file, lambda: pytest.fail("recomputed"), tok.pad_token_id)
    assert list(same["ref_chosen_logps"]) == list(with_ref["ref_chosen_logps"])
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(retrained)
    with pytest.raises(ValueError, match=f"{FILE_NAME}: field 'reference_sha256'"):
        attach_reference_logps(ds, pairs, retrained, file, lambda: None, tok.pad_token_id)
    # several processes never compute their own reference
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="python -m steca.training.reference_logps"):
        attach_reference_logps(ds, pairs, nano_dir, tmp_path / "missing.jsonl", lambda: None, tok.pad_token_id)


def test_model_fingerprint_reads_samples_of_large_weight_files(tmp_path):
    """A weight file over 16 x 64 KiB is read in 16 evenly spaced pieces: a change inside one changes the
    digest, the same bytes in another folder give the same digest, and the config always counts."""
    from steca.training.reference_logps import model_fingerprint

    rng = torch.Generator().manual_seed(0)
    weights = bytearray(torch.randint(0, 256, (4 << 20,), generator=rng, dtype=torch.uint8).numpy().tobytes())
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "config.json").write_text('{"hidden_size": 8}')
        (folder / "model.safetensors").write_bytes(weights)
    assert model_fingerprint(a) == model_fingerprint(b) != model_fingerprint(tmp_path / "c")
    # the Trainer's pickled arguments name the output folder: two folders of the same model differ there
    (a / "training_args.bin").write_bytes(b"output_dir=a")
    (b / "training_args.bin").write_bytes(b"output_dir=b")
    assert model_fingerprint(a) == model_fingerprint(b)
    size, chunk = len(weights), 1 << 16
    weights[7 * (size - chunk) // 15 + 5] ^= 1  # inside the 8th piece
    (b / "model.safetensors").write_bytes(weights)
    assert model_fingerprint(a) != model_fingerprint(b)
    (b / "model.safetensors").write_bytes((a / "model.safetensors").read_bytes())
    (b / "config.json").write_text('{"hidden_size": 16}')
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint("org/some-model") == "name:org/some-model"


def test_trl_fast_path_equals_public_fallback(nano_dir, pairs, tmp_path):
    """One DPO batch through trl's trainer (private hooks) and through the public-API trainer: same loss, same grads."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    from steca.training import dpo
    from steca.training.reinforced import PairCollator

    tok = load_tokenizer(nano_dir)
    ds = build_pair_dataset(pairs, tok, 64, 96, with_rejected=True)
    ds = attach_reference_logps(ds, pairs, nano_dir, tmp_path / FILE_NAME,
                                lambda: AutoModelForCausalLM.from_pretrained(nano_dir), tok.pad_token_id)
    results = {}
    for fast in (True, False):
        model = load_model(ModelArguments(str(nano_dir)))
        with torch.no_grad():  # move the policy away from the reference so the margin is not 0
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        cfg = DPOConfig(output_dir=str(tmp_path / f"fast{fast}"), report_to="none", use_cpu=True, beta=0.1,
                        max_length=None, bf16=False, gradient_checkpointing=False)
        trainer = dpo.make_dpo_trainer(model, tok, ds, cfg, fast=fast)
        rows = [ds[i] for i in range(4)]
        batch = (dpo.AssistantOnlyPreferenceCollator(tok.pad_token_id)([dpo.to_trl_rows(ds)[i] for i in range(4)])
                 if fast else PairCollator(tok.pad_token_id)(rows))
        model.train(False)
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        results[fast] = (loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert results[True][0].item() > 0
    assert torch.allclose(results[True][0], results[False][0], rtol=1e-4), (results[True][0], results[False][0])
    assert len(results[True][1]) == len(results[False][1])
    for a, b in zip(results[True][1], results[False][1]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_trl_outside_tested_range_warns_once_and_falls_back(monkeypatch, caplog):
    import trl

    from steca.training import trl_adapter

    trl_adapter.trl_fast_path.cache_clear()
    assert trl_adapter.trl_fast_path()  # the pinned trl is in the tested range
    monkeypatch.setattr(trl, "__version__", "9.0.0")
    trl_adapter.trl_fast_path.cache_clear()
    with caplog.at_level(logging.WARNING, logger="steca.training.trl_adapter"):
        assert not trl_adapter.trl_fast_path()
        assert not trl_adapter.trl_fast_path()
    assert len([r for r in caplog.records if "outside the tested range" in r.message]) == 1
    trl_adapter.trl_fast_path.cache_clear()


@pytest.mark.slow(seconds=30)
def test_two_process_lora_with_reference_saves_merges_and_agrees(nano_dir, pairs, tmp_path):
    """steca_train.sh with NPROC=2 (torchrun, gloo), BETA > 0 and LoRA: the reference log-probabilities are
    computed once before the run and read by both ranks; both ranks end with the same weights; the
    adapter is saved and merged after training, equal to merging the saved adapter offline."""
    from transformers import AutoModelForCausalLM

    from steca.training.merge_lora import merge_lora

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "NPROC": "2", "MODEL_PATH": str(nano_dir),
           "OUTPUT_DIR": str(out), RANK_DIGEST_ENV: str(tmp_path / "ranks"), "TRAIN_DATA": str(pairs),
           "BETA": "0.1", "USE_LORA": "true", "MAX_PROMPT_LENGTH": "64", "MAX_TARGET_LENGTH": "96"}
    extra = ["--max_steps", "2", "--per_device_train_batch_size", "1", "--save_steps", "2", "--disable_tqdm", "true",
             "--use_cpu", "true", "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "1e-2"]
    proc = subprocess.run(["bash", str(REPO / "Reinfoced_train/steca_train.sh"), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("reference log-probabilities of 8 pairs from") == 2, proc.stderr[-4000:]  # both ranks
    tok = load_tokenizer(nano_dir)
    ds = build_pair_dataset(pairs, tok, 64, 96, with_rejected=True)
    from steca.training.reference_logps import dataset_fingerprint

    stored = read_reference_logps(out / FILE_NAME, dataset_fingerprint(pairs, ds))
    want = compute_reference_logps(AutoModelForCausalLM.from_pretrained(nano_dir), ds, tok.pad_token_id)
    assert torch.allclose(torch.tensor(stored), torch.tensor(want), atol=1e-4)
    ranks = rank_digests(tmp_path / "ranks", 2)
    assert ranks[0] == ranks[1]
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged_offline = merge_lora(out / "adapter", tmp_path / "offline")
    assert weights_digest(out, tmp_path / "d1") == weights_digest(merged_offline, tmp_path / "d2")
    assert weights_digest(out, tmp_path / "d3") != weights_digest(nano_dir, tmp_path / "d4")
    assert AutoModelForCausalLM.from_pretrained(out).config.use_cache


def _part_devices(env: dict[str, str], parts: int) -> list[str]:
    script = "source sampling/common.sh; for ((i = 0; i < %d; i++)); do echo \"[$(part_devices $i)]\"; done" % parts
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [line.strip("[]") for line in proc.stdout.split()]


def test_sampling_parts_get_their_own_gpus():
    base = {"CUDA_VISIBLE_DEVICES": ""}
    assert _part_devices({**base, "GPU_IDS": "0,1,2,3"}, 4) == ["0", "1", "2", "3"]
    assert _part_devices({**base, "GPU_IDS": "0,1,2,3", "TP": "2"}, 2) == ["0,1", "2,3"]
    assert _part_devices({**base, "GPU_IDS": "4,5,6,7", "GPUS_PER_PART": "2"}, 3) == ["4,5", "6,7", "4,5"]
    assert _part_devices({"CUDA_VISIBLE_DEVICES": "3,5", "GPU_IDS": ""}, 2) == ["3", "5"]


def test_sampling_script_runs_each_part_on_its_gpus(alfworld_data, alfworld_sft_sample, tmp_path):
    """expert_generate_response.sh with PART_NUM=2: each part's process sees its own CUDA_VISIBLE_DEVICES."""
    sft = tmp_path / "sft2.json"
    sft.write_text(json.dumps(json.loads(alfworld_sft_sample.read_text())[:2]))
    env = {**os.environ, "PYTHONPATH": str(REPO), "ENV_DATA": str(alfworld_data), "SFT_FILE": str(sft),
           "OUT_DIR": str(tmp_path / "out"), "PART_NUM": "2", "GPU_IDS": "3,5"}
    proc = subprocess.run(["bash", "sampling/alfworld/expert_generate_response.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "part 0 of 2, CUDA_VISIBLE_DEVICES=3" in proc.stderr
    assert "part 1 of 2, CUDA_VISIBLE_DEVICES=5" in proc.stderr
