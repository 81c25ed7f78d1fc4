"""The same seed gives the same files whatever the process layout and thread count: a reduced `run_demo.sh`
(24 tiny ALFWorld games and 3 small VirtualHome homes, nano models, 1 SFT epoch, 2 Monte Carlo tasks, 4 seen
games, no fair baseline) runs twice, one run after the other, once with JOBS=1 and two threads per process (every
stage one after the other), once with JOBS=2 (stages side by side, and VirtualHome's stages beside ALFWorld's) and
one thread per process; every result file (games, SFT data, tokenizer and weights of every model, step records, training
pairs, evaluation episodes and summaries) must be byte-identical once the run folder's own path is replaced.

Files that hold times or machine state by design are left out: stage markers, logs, results.md (stage times),
plots, training checkpoints, trainer state/arguments, and the model cards trl writes (README.md: their tag
order followed the hash seed, now pinned by run_demo.sh). About 2.5 CPU-minutes per run."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REDUCED = {"SKIP_INSTALL": "true", "ASSETS_DIR": "", "N_TRAIN": "24", "N_SEEN": "4", "N_UNSEEN": "4",
           "BENCH_SIZE": "tiny", "MODEL_SIZE": "nano", "SFT_EPOCHS": "1", "MC_TASKS": "2", "NUM_ROLLOUTS": "2",
           "MAX_NEW_TOKENS": "16", "SAMPLE_MAX_STEPS": "4", "MAX_STEPS": "4", "MAX_LENGTH": "512",
           "VH_HOMES": "3", "VH_UNSEEN_HOMES": "1", "VH_TASKS_PER_HOME": "6", "VH_SEEN_PER_HOME": "2",
           "VH_MODEL_SIZE": "nano", "VH_SFT_EPOCHS": "1", "VH_MC_TASKS": "2", "VH_MAX_NEW_TOKENS": "16", "VH_MAX_STEPS": "4",
           # the fair baseline and the unseen split run the same code as STeCa's training and the seen split
           "FAIR_BASELINE": "false", "EVAL_SPLITS": "dev", "VH_EVAL_SPLITS": "seen"}
RESULT_DIRS = tuple(f"{env}{top}" for env in ("", "vh/") for top in ("bench", "data", "sampling", "eval", "models"))
LEFT_OUT_SUFFIXES = (".log", ".png", ".bin", ".tmp")
LEFT_OUT_NAMES = {"trainer_state.json", "results.md"}


def result_files(run: Path) -> dict[str, bytes]:
    """``{path relative to the run: content with the run's path replaced}`` of the result files of a run."""
    out = {}
    for top in RESULT_DIRS:
        for p in sorted((run / top).rglob("*")):
            rel = p.relative_to(run)
            if (not p.is_file() or p.suffix in LEFT_OUT_SUFFIXES or p.name in LEFT_OUT_NAMES
                    or (top.endswith("models") and p.name == "README.md")
                    or any(part.startswith("checkpoint-") or part == "runs" for part in rel.parts)):
                continue
            out[str(rel)] = p.read_bytes().replace(str(run).encode(), b"<RUN>")
    return out


@pytest.mark.slow(seconds=330)
def test_reduced_demo_same_files_for_jobs_and_threads(tmp_path):
    # one run after the other: side by side they would only compete for the cores
    layouts = {"jobs1_threads2": {"JOBS": "1", "THREADS": "2"}, "jobs2_threads1": {"JOBS": "2", "THREADS": "1"}}
    for name, layout in layouts.items():
        env = {**os.environ, **REDUCED, **layout, "OUT_DIR": str(tmp_path / name), "PYTHONPATH": str(REPO)}
        with (tmp_path / f"{name}.log").open("w") as log:
            code = subprocess.run(["bash", str(REPO / "run_demo.sh")], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=3600).returncode
        assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    a, b = (result_files(tmp_path / name) for name in layouts)
    assert any(k.startswith("eval/steca/dev/") and k.endswith("summary.json") for k in a)
    assert any(k.startswith("vh/eval/steca/seen/") and k.endswith("summary.json") for k in a)
    side_log = (tmp_path / "jobs2_threads1.log").read_text()
    assert "started virtualhome beside the next stages" in side_log
    # the SFT model's evaluation starts beside the sampling chains, before D_s (which waits for both chains)
    assert side_log.index("started eval_sft_dev") < side_log.index("started d_s")
    assert any(k.endswith("model.safetensors") for k in a) and "data/steca_pairs.json" in a
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"{len(differ)} of {len(a)} result files differ between JOBS=1/2 threads and JOBS=2/1 thread: {differ[:10]}"
