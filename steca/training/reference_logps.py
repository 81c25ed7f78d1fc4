"""Reference log-probabilities of every pair, computed once before training and stored beside the run.

For ``beta > 0`` (STeCa's DPO term, SFT + DPO) the loss needs ``lp_ref(y) = sum_t log pi_ref(y_t | x, y_<t)``
of both sides of every pair under the frozen starting model (the same assistant-token sums as the
policy's, :func:`steca.training.losses.sequence_logprobs`). Computing them inside a multi-process run
goes wrong: under FSDP with ``fsdp_cpu_ram_efficient_loading`` a model loaded after the process group
starts has real weights on rank 0 only, and under ZeRO-3 it is partitioned at load. So they are
computed here in one process, with the whole model, and written to a JSONL file that every rank
reads; training then holds no second model. ``Reinfoced_train/steca_train.sh`` runs this step before
training when ``BETA > 0``; a single-process run computes the file itself when it is missing.

    python -m steca.training.reference_logps --model_name_or_path out/sft --data_path pairs.json \\
        --output_file out/steca/reference_logps.jsonl [--max_length 4096]

IPR's file (``data_collection/data_baselines.py ipr``, trained by :mod:`steca.training.ipr`) mixes
outcome pairs, step pairs and SFT records without a rejected side: ``--ipr`` stores values for its
outcome and step pairs only, each line naming its record's row (the SFT records need no reference).

    python -m steca.training.reference_logps --ipr --model_name_or_path out/sft --data_path ipr.json \
        --output_file out/ipr/reference_logps.jsonl

The first line of the file is a header naming the data file (sha256), the reference model (its path and a
digest of its config and weights, :func:`model_fingerprint`) and the token lengths of every tokenised pair
(IPR: also which rows are pairs), so values computed for other data, other truncation or another reference
model (a start model trained again into the same folder) are refused with an error naming the file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from dataclasses import field
from typing import Any, Sequence

import torch

from steca.training.chat import IGNORE_INDEX, RELEASED_MAX_LENGTH
from steca.training.losses import sequence_logprobs
from steca.training.preference_losses import LEVEL_CODES

logger = logging.getLogger(__name__)

FILE_NAME = "reference_logps.jsonl"
COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def ref_logps_file_field() -> Any:
    """The trainers' ``--ref_logps_file`` option (reinforced with beta > 0, DPO, IPR)."""
    return field(default=None, metadata={
        "help": "the reference log-probabilities (python -m steca.training.reference_logps); default "
                "output_dir/reference_logps.jsonl, computed when missing in a one-process run"})


def pair_rows(dataset) -> list[int]:
    """Rows of a tokenised dataset that are preference pairs: all of them, or, in IPR's mixed dataset (a
    ``level`` column), its outcome and step records (the SFT records have no rejected side)."""
    if "level" not in dataset.column_names:
        return list(range(len(dataset)))
    codes = (LEVEL_CODES["outcome"], LEVEL_CODES["step"])
    return [i for i, level in enumerate(dataset["level"]) if level in codes]


def dataset_fingerprint(data_path: str | os.PathLike, dataset) -> dict[str, Any]:
    """What the stored values belong to: the data file's sha256 and a sha256 of every pair's token lengths
    (IPR's mixed dataset: also the number of records and a sha256 of which rows are pairs)."""
    rows = pair_rows(dataset)
    lengths = [[len(r["chosen_input_ids"]), len(r["rejected_input_ids"])] for r in dataset.select(rows)]
    out: dict[str, Any] = {"data_sha256": hashlib.sha256(Path(data_path).read_bytes()).hexdigest(),
                           "n_pairs": len(lengths),
                           "lengths_sha256": hashlib.sha256(json.dumps(lengths).encode()).hexdigest()}
    if "level" in dataset.column_names:
        out["n_records"] = len(dataset)
        out["pair_rows_sha256"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    return out


TRAINING_ARGS_FILE = "training_args.bin"  # transformers.trainer.TRAINING_ARGS_NAME: not weights


def model_fingerprint(model_path: str | os.PathLike, samples: int = 16, chunk: int = 1 << 16) -> str:
    """What identifies the reference model in the file's header (field ``reference_sha256``).

    For a local folder: a sha256 over ``config.json`` and, for every weight file (``*.safetensors``, ``*.bin``
    but the Trainer's pickled ``training_args.bin``, which holds the output folder's path), its name, size and
    ``samples`` evenly spaced ``chunk``-byte pieces. Another checkpoint of the same
    architecture changes nearly every tensor (a merged LoRA adapter changes every adapted layer), so it gets
    another value, while reading stays cheap for a 7B model. A name that is not a folder (a hub id) is used as it is.
    """
    folder = Path(model_path)
    if not folder.is_dir():
        return f"name:{model_path}"
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.name == "config.json" or (p.suffix in (".safetensors", ".bin") and p.name != TRAINING_ARGS_FILE)))
    for p in files:
        size = p.stat().st_size
        digest.update(f"{p.name}:{size}".encode())
        with p.open("rb") as f:
            if p.name == "config.json" or size <= samples * chunk:
                digest.update(f.read())
                continue
            for k in range(samples):
                f.seek(k * (size - chunk) // (samples - 1))
                digest.update(f.read(chunk))
    return digest.hexdigest()


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


def compute_reference_logps(model, dataset, pad_token_id: int, batch_size: int = 4) -> tuple[list[float], list[float]]:
    """``(lp_ref(chosen), lp_ref(rejected))`` per row of a tokenised pair dataset (``with_rejected``)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen: list[float] = []
    rejected: list[float] = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            for side, out in (("chosen", chosen), ("rejected", rejected)):
                ids = [r[f"{side}_input_ids"] for r in rows]
                labels = _pad([r[f"{side}_labels"] for r in rows], IGNORE_INDEX).to(device)
                mask = _pad([[1] * len(s) for s in ids], 0).to(device)
                logits = model(input_ids=_pad(ids, pad_token_id).to(device), attention_mask=mask,
                               use_cache=False).logits
                out.extend(sequence_logprobs(logits.float(), labels).tolist())
    model.train(was_training)
    return chosen, rejected


def write_reference_logps(path: str | os.PathLike, header: dict[str, Any], chosen: Sequence[float],
                          rejected: Sequence[float], rows: Sequence[int] | None = None) -> Path:
    """Header line, then one ``{"index", "ref_chosen_logps", "ref_rejected_logps"}`` line per pair (atomic);
    ``index`` is the pair's row in the dataset (``rows``, default ``0 .. n-1``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        f.write(json.dumps({"header": header}) + "\n")
        for i, c, r in zip(rows if rows is not None else range(len(chosen)), chosen, rejected):
            f.write(json.dumps({"index": i, COLUMNS[0]: c, COLUMNS[1]: r}) + "\n")
    os.replace(tmp, path)
    return path


def read_reference_logps(path: str | os.PathLike, fingerprint: dict[str, Any],
                         rows: Sequence[int] | None = None) -> tuple[list[float], list[float]]:
    """The stored values, after checking that they belong to this data and tokenisation (and, given the
    pair ``rows``, that line ``k`` is row ``rows[k]``)."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty reference log-probability file")
    header = json.loads(lines[0]).get("header", {})
    for key, want in fingerprint.items():
        if header.get(key) != want:
            raise ValueError(f"{path}: field {key!r} is {header.get(key)!r} but this run has {want!r} "
                             "(computed for other data, other truncation or another reference model): delete it "
                             "or recompute it")
    chosen, rejected = [], []
    for n, line in enumerate(lines[1:], start=1):
        rec = json.loads(line)
        c, r = rec.get(COLUMNS[0]), rec.get(COLUMNS[1])
        if not isinstance(c, (int, float)) or not isinstance(r, (int, float)) or not (math.isfinite(c) and math.isfinite(r)):
            raise ValueError(f"{path}: line {n + 1} (pair {rec.get('index')}): reference log-probabilities must be finite numbers")
        if rows is not None and n <= len(rows) and rec.get("index") != rows[n - 1]:
            raise ValueError(f"{path}: line {n + 1}, field 'index': {rec.get('index')!r}, but pair {n} of this "
                             f"data is record {rows[n - 1]}: delete it or recompute it")
        chosen.append(float(c))
        rejected.append(float(r))
    if len(chosen) != fingerprint["n_pairs"]:
        among = f" among {fingerprint['n_records']} records" if "n_records" in fingerprint else ""
        raise ValueError(f"{path}: {len(chosen)} pairs stored, the data has {fingerprint['n_pairs']}{among}")
    return chosen, rejected


def world_size() -> int:
    """Processes of this run (torchrun / accelerate set ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def attach_reference_logps(dataset, data_path: str | os.PathLike, ref_path: str | os.PathLike, file: str | os.PathLike,
                           load_reference, pad_token_id: int):
    """``dataset`` with the two reference columns, read from ``file`` or (one process only) computed and written.

    ``load_reference()`` returns the reference model; it is called only when the file is missing. In
    IPR's mixed dataset only the outcome and step pairs (:func:`pair_rows`) have stored values; the
    SFT records get 0.0, which :func:`~steca.training.preference_losses.ipr_loss` never uses.
    """
    fingerprint = {**dataset_fingerprint(data_path, dataset), "reference_sha256": model_fingerprint(ref_path)}
    rows = pair_rows(dataset)
    mixed = "n_records" in fingerprint
    what = (f"{len(rows)} outcome and step pairs (of {len(dataset)} IPR records)" if mixed
            else f"{len(rows)} pairs")
    file = Path(file)
    if not file.is_file():
        if world_size() > 1:
            raise ValueError(
                f"{data_path}: a run of {world_size()} processes needs the reference log-probabilities of its {what} "
                f"computed beforehand in one process: python -m steca.training.reference_logps{' --ipr' if mixed else ''} "
                f"--model_name_or_path {ref_path} --data_path {data_path} --output_file {file} "
                "(Reinfoced_train/steca_train.sh does this)")
        logger.info("computing reference log-probabilities of %s with %s", what, ref_path)
        model = load_reference()
        chosen, rejected = compute_reference_logps(model, dataset.select(rows) if mixed else dataset, pad_token_id)
        del model
        write_reference_logps(file, {**fingerprint, "reference_model": str(ref_path)}, chosen, rejected, rows)
    chosen, rejected = read_reference_logps(file, fingerprint, rows)
    logger.info("reference log-probabilities of %s from %s", what, file)
    if mixed:
        full_c, full_r = [0.0] * len(dataset), [0.0] * len(dataset)
        for i, c, r in zip(rows, chosen, rejected):
            full_c[i], full_r[i] = c, r
        chosen, rejected = full_c, full_r
    return dataset.add_column(COLUMNS[0], chosen).add_column(COLUMNS[1], rejected)


def main(argv: Sequence[str] | None = None) -> Path:
    from steca.training.ipr import IPRArguments, build_ipr_dataset
    from steca.training.trainer_setup import ModelArguments, load_model, load_tokenizer
    from steca.training.reinforced import build_pair_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model_name_or_path", required=True, help="the reference (frozen starting) model")
    ap.add_argument("--data_path", required=True)
    ap.add_argument("--output_file", required=True)
    ap.add_argument("--max_prompt_length", type=int, default=None, help="as the training run's (default: off)")
    ap.add_argument("--max_target_length", type=int, default=None, help="as the training run's (default: off)")
    ap.add_argument("--max_length", type=int, default=RELEASED_MAX_LENGTH, help="as the training run's")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default=None, help="default: cuda when available")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--strict_data", action="store_true")
    ap.add_argument("--skip_invalid", action="store_true")
    ap.add_argument("--ipr", action="store_true", help="the data is IPR's mixed file (data_baselines.py ipr): "
                    "values for its outcome and step pairs only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokenizer = load_tokenizer(args.model_name_or_path)
    if args.ipr:
        lengths = IPRArguments(max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                               max_target_length=args.max_target_length)
        dataset = build_ipr_dataset(args.data_path, tokenizer, lengths, args.strict_data, args.skip_invalid)
    else:
        dataset = build_pair_dataset(args.data_path, tokenizer, args.max_prompt_length, args.max_target_length,
                                     with_rejected=True, strict=args.strict_data, skip_invalid=args.skip_invalid,
                                     max_length=args.max_length)
    rows = pair_rows(dataset)
    model = load_model(ModelArguments(args.model_name_or_path, dtype=args.dtype))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    chosen, rejected = compute_reference_logps(model.to(device), dataset.select(rows), tokenizer.pad_token_id,
                                               args.batch_size)
    header = {**dataset_fingerprint(args.data_path, dataset), "reference_model": args.model_name_or_path,
              "reference_sha256": model_fingerprint(args.model_name_or_path)}
    out = write_reference_logps(args.output_file, header, chosen, rejected, rows)
    logger.info("wrote %d reference log-probability pairs to %s", len(chosen), out)
    return out


if __name__ == "__main__":
    main()
