"""End-to-end training runs on a nano model bootstrapped from the shared ALFWorld trajectories:
SFT learns, the saved model reloads and generates, interrupted runs resume, LoRA merges, trl's DPO
scores only assistant tokens, and each trainer completes a 2-process CPU run (torchrun, gloo)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from training_fixtures import nano_model, rank_digests, weights_digest, write_small_pairs

from steca.records import load_sft
from steca.training.chat import encode_chat
from steca.training.trainer_setup import RANK_DIGEST_ENV, DataArguments, ModelArguments, load_tokenizer
from steca.training.losses import sequence_logprobs
from steca.training.sft import train_sft

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nano_dir(alfworld_sft_sample: Path, tmp_path_factory) -> Path:
    return nano_model(tmp_path_factory, alfworld_sft_sample)


@pytest.fixture(scope="module")
def sft_small(alfworld_sft_sample: Path, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "sft16.json"
    p.write_text(json.dumps(json.loads(alfworld_sft_sample.read_text())[:16]))
    return p


@pytest.fixture(scope="module")
def pairs_small(alfworld_sft_sample: Path, tmp_path_factory) -> Path:
    return write_small_pairs(alfworld_sft_sample, tmp_path_factory.mktemp("data") / "pairs.jsonl")


def _sft_config(out: Path, **kw):
    from trl import SFTConfig

    base = dict(output_dir=str(out), per_device_train_batch_size=2, learning_rate=3e-3, max_length=512,
                report_to="none", bf16=False, gradient_checkpointing=False, use_cpu=True, logging_steps=1,
                save_steps=1000, disable_tqdm=True, lr_scheduler_type="constant", seed=0)
    base.update(kw)
    return SFTConfig(**base)


def _mean_nll(model_dir: Path, sft_file: Path, n: int = 6, max_length: int = 512) -> float:
    """Mean NLL per trained (assistant) token over the first n trajectories."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for rec in load_sft(sft_file, strict=True).records[:n]:
            enc = encode_chat(tok, rec.conversations)
            ids = torch.tensor([enc.input_ids[:max_length]])
            labels = torch.tensor([enc.labels[:max_length]])
            total -= sequence_logprobs(model(input_ids=ids).logits, labels).item()
            count += int((labels[:, 1:] != -100).sum())
    return total / count


def test_sft_lowers_loss_and_saved_model_generates(nano_dir, sft_small, tmp_path):
    before = _mean_nll(nano_dir, sft_small)
    res = train_sft(ModelArguments(str(nano_dir)), DataArguments(str(sft_small)), _sft_config(tmp_path / "sft", max_steps=10))
    assert res.global_step == 10
    after = _mean_nll(res.output_dir, sft_small)
    assert after < 0.8 * before, (before, after)
    assert res.losses[-1] < res.losses[0]
    conv = load_sft(sft_small, strict=True).records[0].conversations
    assert _generate(res.output_dir, conv[:3]).strip()


def _hand_masked_nll(model_dir: Path, sft_file: Path) -> tuple[float, float]:
    """Token-mean NLL over every record of ``sft_file``: on the assistant tokens only (the mask from
    transformers' own ``{% generation %}`` handling of the chat template), and on every token."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    masked, masked_n, every, every_n = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for rec in load_sft(sft_file, strict=True).records:
            enc = tok.apply_chat_template([m.to_dict() for m in rec.conversations], return_dict=True,
                                          return_assistant_tokens_mask=True)
            ids = enc["input_ids"]
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            for t in range(1, len(ids)):
                nll = -logp[t - 1, ids[t]].item()
                every, every_n = every + nll, every_n + 1
                if enc["assistant_masks"][t]:
                    masked, masked_n = masked + nll, masked_n + 1
    return masked / masked_n, every / every_n


def test_sft_first_step_loss_is_the_assistant_masked_nll(nano_dir, sft_small, tmp_path):
    """The loss the SFT trainer reports for its first batch (the whole 2-record file) is the NLL of the
    assistant tokens, computed here position by position, and not the NLL of every token."""
    from transformers import AutoModelForCausalLM

    two = tmp_path / "sft2.json"
    two.write_text(json.dumps(json.loads(sft_small.read_text())[:2]))
    # the bootstrap's init predicts nearly uniformly (every token's NLL ~ log V): redraw the weights larger
    sharp = tmp_path / "sharp"
    model = AutoModelForCausalLM.from_pretrained(nano_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3, generator=g)
    model.save_pretrained(sharp)
    load_tokenizer(nano_dir).save_pretrained(sharp)
    masked, every = _hand_masked_nll(sharp, two)
    res = train_sft(ModelArguments(str(sharp), dtype="float32"), DataArguments(str(two)),
                    _sft_config(tmp_path / "sft", max_steps=1, max_length=4096))
    assert abs(masked - every) > 0.05, (masked, every)  # the two alternatives are far apart here
    assert res.losses[0] == pytest.approx(masked, abs=2e-3), (res.losses, masked, every)


def _reinforced(nano_dir: Path, pairs: Path, out: Path, beta: float) -> Path:
    from steca.training.reinforced import main as reinforced_main

    return reinforced_main(["--model_name_or_path", str(nano_dir), "--data_path", str(pairs), "--output_dir", str(out),
                            "--beta", str(beta), "--max_steps", "2", "--per_device_train_batch_size", "2",
                            "--learning_rate", "1e-3", "--max_prompt_length", "64", "--max_target_length", "128",
                            "--use_cpu", "true", "--seed", "0", "--save_steps", "1000", "--disable_tqdm", "true",
                            "--dtype", "float32"]).output_dir


def test_beta_changes_the_reinforced_result(nano_dir, pairs_small, tmp_path):
    """From the same start, data and seed, beta = 0.1 (preference term against the frozen start) ends with
    other weights than beta = 0 (reward-weighted NLL), and beta = 0 is reproducible."""
    zero = weights_digest(_reinforced(nano_dir, pairs_small, tmp_path / "b0", 0.0), tmp_path / "d0")
    again = weights_digest(_reinforced(nano_dir, pairs_small, tmp_path / "b0again", 0.0), tmp_path / "d0again")
    positive = weights_digest(_reinforced(nano_dir, pairs_small, tmp_path / "b01", 0.1), tmp_path / "d01")
    start = weights_digest(nano_dir, tmp_path / "start")
    assert zero == again
    assert positive not in (zero, start) and zero != start


def _generate(model_dir: Path, messages) -> str:
    """Greedy reply through the ``hf`` backend, or through transformers directly if it is absent."""
    try:
        from eval_agent.agents.policy import SamplingParams
        from eval_agent.agents.hf import HFPolicy
    except ImportError:
        from transformers import AutoModelForCausalLM

        tok = load_tokenizer(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        enc = tok.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                      add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    policy = HFPolicy(str(model_dir), device="cpu", dtype="float32")
    try:
        return policy.generate([messages], SamplingParams(max_new_tokens=12))[0]
    finally:
        policy.close()


class _Interrupt(Exception):
    pass


def _stop_at(step: int):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                raise _Interrupt(f"simulated crash after step {step}")

    return StopAt()


def _first_step_recorder(seen: list):
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            seen.append(state.global_step)

    return Record()


def test_interrupted_sft_resumes_from_checkpoint(nano_dir, sft_small, tmp_path):
    out = tmp_path / "resume"
    cfg = _sft_config(out, max_steps=4, save_steps=2, per_device_train_batch_size=1, max_length=400)
    with pytest.raises(_Interrupt):
        train_sft(ModelArguments(str(nano_dir)), DataArguments(str(sft_small)), cfg, callbacks=[_stop_at(3)])
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    seen: list[int] = []
    res = train_sft(ModelArguments(str(nano_dir)), DataArguments(str(sft_small)), cfg,
                    callbacks=[_first_step_recorder(seen)])
    assert seen[0] == 2, seen  # continued after checkpoint-2, not from scratch
    assert res.global_step == 4 and (out / "checkpoint-4").is_dir()


def test_lora_sft_saves_merged_loadable_model(nano_dir, sft_small, tmp_path):
    from transformers import AutoModelForCausalLM

    margs = ModelArguments(str(nano_dir), use_lora=True, lora_r=4, lora_alpha=8)
    res = train_sft(margs, DataArguments(str(sft_small)), _sft_config(tmp_path / "lora", max_steps=2, max_length=400))
    assert (res.output_dir / "adapter" / "adapter_config.json").is_file()
    assert not (res.output_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(res.output_dir)
    base = AutoModelForCausalLM.from_pretrained(nano_dir)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    diffs = [not torch.equal(a, b) for (_, a), (_, b) in zip(merged.named_parameters(), base.named_parameters())]
    assert any(diffs)
    # merging the saved adapter offline gives the same weights
    from steca.training.merge_lora import merge_lora

    again = AutoModelForCausalLM.from_pretrained(merge_lora(res.output_dir / "adapter", tmp_path / "merged"))
    for (n, a), (_, b) in zip(merged.named_parameters(), again.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_dpo_scores_only_continuation_assistant_tokens(nano_dir, pairs_small, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    from steca.training.dpo import AssistantOnlyPreferenceCollator, _trainer_class, build_dpo_dataset
    from steca.training.reinforced import build_pair_dataset

    tok = load_tokenizer(nano_dir)
    ds = build_dpo_dataset(pairs_small, tok, 128, 128)
    ours = build_pair_dataset(pairs_small, tok, 128, 128, with_rejected=True)
    model = AutoModelForCausalLM.from_pretrained(nano_dir)
    ref = AutoModelForCausalLM.from_pretrained(nano_dir)
    cfg = DPOConfig(output_dir=str(tmp_path / "dpo"), report_to="none", bf16=False, use_cpu=True,
                    gradient_checkpointing=False, max_length=None, beta=0.1)
    trainer = _trainer_class()(model=model, ref_model=ref, args=cfg, train_dataset=ds, processing_class=tok,
                               data_collator=AssistantOnlyPreferenceCollator(tok.pad_token_id))
    batch = AssistantOnlyPreferenceCollator(tok.pad_token_id)([ds[0], ds[1]])
    ref_c, ref_r = trainer.compute_ref_log_probs(ref, batch)
    from steca.training.reinforced import PairCollator

    pb = PairCollator(tok.pad_token_id)([ours[0], ours[1]])
    with torch.no_grad():
        want = sequence_logprobs(ref(input_ids=pb["input_ids"], attention_mask=pb["attention_mask"]).logits, pb["labels"])
    assert torch.allclose(torch.cat([ref_c, ref_r]), want, atol=1e-3)


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize("script,variant", [("sft/my_sft.sh", None), ("Reinfoced_train/steca_train.sh", "steca"),
                                            ("Reinfoced_train/steca_train.sh", "dpo")])
def test_two_process_cpu_run_saves_loadable_model(script, variant, nano_dir, sft_small, pairs_small, tmp_path):
    """The stage scripts with NPROC=2: torchrun, gloo, two CPU processes; both ranks end with the same
    weights, the ones saved; the output reloads."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "NPROC": "2",
           "MODEL_PATH": str(nano_dir), "OUTPUT_DIR": str(out), RANK_DIGEST_ENV: str(tmp_path / "ranks")}
    extra = ["--max_steps", "2", "--per_device_train_batch_size", "1", "--save_steps", "2", "--logging_steps", "1",
             "--disable_tqdm", "true"]  # no --use_cpu: the stage script must make the ranks train together
    if variant is None:
        env.update(SFT_DATA=str(sft_small), MAX_LENGTH="400")
    else:
        env.update(TRAIN_DATA=str(pairs_small), VARIANT=variant, MAX_PROMPT_LENGTH="64", MAX_TARGET_LENGTH="128")
        if variant == "steca":
            env["BETA"] = "0.1"  # exercise the frozen reference model under DDP too
    proc = subprocess.run(["bash", str(REPO / script), *extra], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count(" done: 2 steps") == 2, proc.stderr[-4000:]  # one line per rank
    # every rank closes the process group before it exits (a rank that tore gloo down at exit aborted once)
    assert proc.stderr.count("closed the distributed process group") == 2, proc.stderr[-4000:]
    assert "terminate called" not in proc.stderr
    assert (out / "checkpoint-2").is_dir()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(load_tokenizer(out))
    ranks = rank_digests(tmp_path / "ranks", 2)
    assert ranks[0] == ranks[1] == weights_digest(out, tmp_path / "saved")
    assert ranks[0] != weights_digest(nano_dir, tmp_path / "start")
