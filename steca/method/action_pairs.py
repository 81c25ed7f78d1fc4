"""How an action encoder scores three kinds of action pairs on real data (README, "Action encoders").

    python -m steca.method.action_pairs --data_dir ../shared/data --encoder minilm

Actions: every ``Action:`` of the ALFWorld SFT file (``alfworld/alfworld_sft_sample.json``) and every
step of the VirtualHome task file (``virtualhome/vh_seen_test.jsonl``, field ``action_list``),
lower-cased, distinct. Every pair of distinct actions of one environment is one of:

* ``number``: the same words with another object number (``go to desk 1`` / ``go to desk 2``);
* ``object``: the same verb (first word), another object (``go to desk 1`` / ``go to shelf 1``);
* ``verb``: another verb (``go to desk 1`` / ``open drawer 1``).

It prints, per environment and kind, the number of pairs and the 0, 5, 50, 95 and 100th percentiles
of their cosine, and for a threshold (``--max_similarity``, default the encoder's shipped one) the
share of each kind that counts as "clearly different" (``cos < threshold``). It also prints the
median cost ``1 - cos`` of ``object`` pairs divided by ``sqrt(10^2 + 10^2)``: the DTW distance of a
10-step trajectory with one such action changed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from eval_agent.storage import read_utf8
from eval_agent.types import parse_action
from steca.method.encoders import ENCODER_THRESHOLDS, ENCODERS, ActionEncoder, make_encoder

KINDS = ("number", "object", "verb")
PERCENTILES = (0, 5, 50, 95, 100)


def pair_kind(a: str, b: str) -> str:
    """``number``, ``object`` or ``verb`` for two distinct actions (see the module docstring)."""
    if re.sub(r"\d+", "#", a) == re.sub(r"\d+", "#", b):
        return "number"
    return "object" if a.split()[:1] == b.split()[:1] else "verb"


def alfworld_actions(sft_file: Path) -> list[str]:
    """The distinct actions of an SFT file's assistant turns, lower-cased."""
    data = json.loads(read_utf8(sft_file))
    out = set()
    for rec in data:
        for m in rec["conversations"]:
            if m.get("role", m.get("from")) in ("assistant", "gpt"):
                a = parse_action(m.get("content", m.get("value", "")))
                if a:
                    out.add(a.lower())
    return sorted(out)


def virtualhome_actions(task_file: Path) -> list[str]:
    """The distinct steps of a VirtualHome task file's ``action_list``, lower-cased."""
    out = set()
    for line in read_utf8(task_file).splitlines():
        if line.strip():
            out.update(a.strip().lower() for a in json.loads(line)["action_list"] if a.strip())
    return sorted(out)


def cosines_by_kind(actions: Sequence[str], encoder: ActionEncoder) -> dict[str, np.ndarray]:
    """The cosine of every pair of distinct actions, grouped by :func:`pair_kind`."""
    vecs = encoder.encode(list(actions))
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    unit = vecs / np.where(norms > 0, norms, 1.0)
    cos = unit @ unit.T
    groups: dict[str, list[float]] = {k: [] for k in KINDS}
    for i, j in itertools.combinations(range(len(actions)), 2):
        groups[pair_kind(actions[i], actions[j])].append(float(cos[i, j]))
    return {k: np.asarray(v) for k, v in groups.items()}


def summary(groups: dict[str, np.ndarray], threshold: float) -> dict[str, dict]:
    """Per kind: pair count, cosine percentiles and the share with ``cos < threshold``."""
    out = {}
    for kind, vals in groups.items():
        if len(vals) == 0:
            out[kind] = {"pairs": 0}
            continue
        out[kind] = {"pairs": int(len(vals)),
                     "percentiles": {p: round(float(np.percentile(vals, p)), 3) for p in PERCENTILES},
                     "share_different": round(float(np.mean(vals < threshold)), 3)}
    if len(groups["object"]):
        out["one_object_change_distance_10_steps"] = round(float(np.median(1 - groups["object"])) / math.sqrt(200), 4)
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="holds alfworld/alfworld_sft_sample.json and virtualhome/vh_seen_test.jsonl")
    p.add_argument("--encoder", default="minilm", choices=ENCODERS)
    p.add_argument("--encoder_model", default=None, help="local model directory (bert-cls)")
    p.add_argument("--max_similarity", type=float, default=None, help="default: the encoder's shipped threshold")
    args = p.parse_args(argv)
    encoder = make_encoder(args.encoder, args.encoder_model)
    threshold = args.max_similarity if args.max_similarity is not None else ENCODER_THRESHOLDS[args.encoder].max_similarity
    root = Path(args.data_dir)
    result = {"encoder": encoder.name, "max_similarity": threshold}
    for env, actions in (("alfworld", alfworld_actions(root / "alfworld" / "alfworld_sft_sample.json")),
                         ("virtualhome", virtualhome_actions(root / "virtualhome" / "vh_seen_test.jsonl"))):
        result[env] = {"actions": len(actions), **summary(cosines_by_kind(actions, encoder), threshold)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
