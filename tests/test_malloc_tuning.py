"""The stage scripts' allocator setting (scripts/stage_common.sh): large freed blocks stay in the process.

Page faults are counted, not timed. Buffers of 0.25-6 MiB of changing sizes, allocated and freed 200 times
(as KV caches and logits of growing length are): under glibc's defaults their pages are faulted in again and
again (about 400k faults here), with the setting the stage scripts export they stay mapped (6k)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# 200 rounds of four filled buffers of changing sizes; prints the minor page faults that took. Transparent
# huge pages are switched off for the probe (prctl PR_SET_THP_DISABLE = 41), so that a machine whose THP
# setting is "always" counts the same 4 KiB pages as one whose setting is "madvise".
PROBE = """
import ctypes
import resource
import numpy as np
ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(200):
    kept = [np.ones((1 + (i + j) % 24) * 256 * 1024, dtype=np.uint8) for j in range(4)]
    del kept
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _stage_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment a stage script's child process sees after sourcing stage_common.sh."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MALLOC_TUNING")} | extra
    out = subprocess.run(["bash", "-c", "source scripts/stage_common.sh && env -0"], cwd=ROOT, env=env,
                         capture_output=True, check=True).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def _faults(env: dict[str, str]) -> int:
    return int(subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                              check=True).stdout)


def test_stage_processes_keep_freed_blocks_instead_of_faulting_them_in_again():
    tuned = _stage_env({})
    assert "glibc.malloc.mmap_threshold=33554432" in tuned["GLIBC_TUNABLES"]
    untuned = _stage_env({"MALLOC_TUNING": "false"})
    assert "GLIBC_TUNABLES" not in untuned
    default_faults, tuned_faults = _faults(untuned), _faults(tuned)
    # the buffers hold about 640k pages in all: glibc's default faults a good part of them in again
    assert default_faults > 50_000
    assert tuned_faults < default_faults / 10


def test_a_users_own_allocator_setting_is_kept():
    own = "glibc.malloc.arena_max=2"
    assert _stage_env({"GLIBC_TUNABLES": own})["GLIBC_TUNABLES"] == own
