"""Mutation score of the method's core: mutmut over steca/method/, the losses, the chat masks and
the episode driver, against the fast tests only.

    python scripts/mutation.py            # prints "mutation score: K/N = P% ..." and exits 1 below --goal
    python scripts/mutation.py --work DIR --retest   # after adding tests: re-test only DIR's survivors

mutmut (3.8.1) goes into its own virtual environment (``--venv``, default
``<temp dir>/steca-mutation-venv``, created with ``--system-site-packages`` so it sees the project's
packages; nothing is installed into the system Python). The checkout's files (tracked and untracked,
not ignored) are copied to a scratch folder, where mutmut writes its ``mutants/`` tree, so the
checkout is never touched. The score counts a mutant as killed when a test failed or timed out;
the survivors named in ``scripts/mutation_equivalent.txt`` (with the reason each cannot change
behaviour) are left out of the denominator. ``--show`` prints the diff of every other survivor.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTMUT_VERSION = "3.8.1"
MUTATED = ["steca/method/", "steca/training/losses.py", "steca/training/preference_losses.py",
           "steca/training/chat.py", "eval_agent/episode.py"]
FAST_TESTS = ["tests/test_method_math.py", "tests/test_method_separating.py", "tests/test_method_datasets.py",
              "tests/test_baselines.py", "tests/test_masks_losses_episode.py", "tests/test_action_encoders.py"]
# not tests/test_method_reflection_http.py: under mutmut it timed out even on mutants that only change a progress
# bar's label (a timeout counts as a kill, so these were false kills); the reflector's retries are tested without HTTP
EQUIVALENT_FILE = REPO / "scripts" / "mutation_equivalent.txt"
KILLED = {"killed", "timeout"}
TIMEOUT_CONSTANT = 8.0
TIMEOUT_MULTIPLIER = 3.0


def ensure_venv(venv: Path) -> Path:
    """The venv's mutmut executable (the venv is created and mutmut installed on first use)."""
    exe = venv / "bin" / "mutmut"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"mutmut=={MUTMUT_VERSION}"], check=True)
    return exe


def copy_checkout(dest: Path) -> None:
    """Tracked and untracked (not ignored) files of the checkout, as they are on disk."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def write_config(work: Path, mutated: list[str], tests: list[str]) -> None:
    lines = ["[mutmut]", "source_paths ="] + [f"    {p}" for p in mutated]
    # a mutant whose tests run past (their time + TIMEOUT_CONSTANT s) x TIMEOUT_MULTIPLIER of wall time counts as a
    # timeout (a kill). mutmut's defaults (1 s, x15) turned fast mutants into false timeouts on a machine shared with
    # other jobs, and let a mutant that loops forever hold the only worker for minutes
    lines += [f"timeout_constant = {TIMEOUT_CONSTANT}", f"timeout_multiplier = {TIMEOUT_MULTIPLIER}"]
    lines += ["also_copy =", "    steca/", "    eval_agent/",
              "pytest_add_cli_args = -p no:randomly -p no:cacheprovider -q",
              "pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")


def load_equivalent(path: Path) -> dict[str, str]:
    """``mutant name -> reason`` from lines ``<name>  <reason>`` (``#`` comments and blank lines skipped)."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


def statuses(exe: Path, work: Path) -> dict[str, str]:
    res = subprocess.run([str(exe), "results", "--all", "true"], cwd=work, check=True, capture_output=True, text=True,
                         env=_env())
    out = {}
    for line in res.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            out[name] = status
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the mutants/ tree must be what the tests import
    # mutmut forks a child per mutant: torch's thread pools do not survive a fork (the child hangs and
    # would count as a timeout, i.e. a kill), so every library runs on one thread
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    # the scratch copy has no ../shared/data beside it: point the real-data tests at the checkout's
    shared = REPO.parent / "shared" / "data"
    if "STECA_SHARED_DATA" not in env and shared.is_dir():
        env["STECA_SHARED_DATA"] = str(shared)
    return env


def module_of(mutant: str) -> str:
    """``steca.method.baselines`` of ``steca.method.baselines.x_build_rft__mutmut_12`` (methods: ``.xǁClassǁ...``)."""
    return mutant.split(".x_")[0].split(".xǁ")[0]


def copy_tests(work: Path) -> None:
    """The checkout's test files, as they are now, over the work folder's copies (``tests/`` and ``mutants/tests/``)."""
    for src in (REPO / "tests").iterdir():
        if src.is_file():
            for dest in (work / "tests", work / "mutants" / "tests"):
                if dest.is_dir():
                    shutil.copy2(src, dest / src.name)


def score(status: dict[str, str], equivalent: dict[str, str]) -> tuple[int, int]:
    """(killed, counted): a listed-equivalent survivor is not counted."""
    counted = [n for n in status if n not in equivalent or status[n] in KILLED]
    return sum(1 for n in counted if status[n] in KILLED), len(counted)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", type=Path, default=Path(os.environ.get("MUTATION_VENV", Path(tempfile.gettempdir()) / "steca-mutation-venv")))
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel")
    p.add_argument("--paths", nargs="+", default=MUTATED, help="files or folders to mutate")
    p.add_argument("--tests", nargs="+", default=FAST_TESTS)
    p.add_argument("--goal", type=float, default=90.0, help="exit 1 when the score (%%) is below this")
    p.add_argument("--show", action="store_true", help="print the diff of every survivor not listed as equivalent")
    p.add_argument("--report_only", action="store_true", help="score the results already in --work, run nothing")
    p.add_argument("--retest", action="store_true",
                   help="in an existing --work: copy the checkout's tests again and re-test only the mutants not "
                        "killed and not listed as equivalent (after adding tests; the mutated code must be unchanged)")
    p.add_argument("--only", nargs="+", default=None, metavar="GLOB",
                   help="with --retest: re-test only the mutants whose names match one of these fnmatch patterns")
    args = p.parse_args(argv)

    exe = ensure_venv(args.venv)
    work = args.work or Path(tempfile.mkdtemp(prefix="steca-mutation-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "mutants").exists():
        if args.retest or args.report_only:
            p.error(f"{work} holds no mutmut results to re-test or report")
        copy_checkout(work)
        write_config(work, args.paths, args.tests)
    equivalent = load_equivalent(EQUIVALENT_FILE)
    retest: list[str] = []
    if args.retest:
        write_config(work, args.paths, args.tests)  # same scope and tests; picks up a changed timeout setting
        copy_tests(work)
        retest = sorted(n for n, s in statuses(exe, work).items() if s not in KILLED and n not in equivalent
                        and (args.only is None or any(fnmatch.fnmatch(n, g) for g in args.only)))
    start = time.time()
    if args.report_only or (args.retest and not retest):
        run = subprocess.CompletedProcess([], 0)
    else:
        with (work / "mutmut.log").open("a" if args.retest else "w") as log:
            run = subprocess.run([str(exe), "run", "--max-children", str(args.jobs), *retest], cwd=work, stdout=log,
                                 stderr=subprocess.STDOUT, env=_env())
    wall = time.time() - start
    if run.returncode != 0:
        print(f"mutmut run failed (exit {run.returncode}); see {work / 'mutmut.log'}")
        return 2
    status = statuses(exe, work)
    survivors = sorted(n for n, s in status.items() if s not in KILLED)
    unlisted = [n for n in survivors if n not in equivalent]
    stale = sorted(n for n in equivalent if status.get(n) not in (None, "survived", "no tests"))
    killed, counted = score(status, equivalent)
    pct = 100.0 * killed / counted if counted else 0.0
    by_status: dict[str, int] = {}
    for s in status.values():
        by_status[s] = by_status.get(s, 0) + 1
    print(f"mutants: {len(status)} ({', '.join(f'{k} {v}' for k, v in sorted(by_status.items()))}); "
          f"listed equivalent (left out of the score): {len(survivors) - len(unlisted)}")
    for mod in sorted({module_of(n) for n in status}):
        part = {n: s for n, s in status.items() if module_of(n) == mod}
        k, c = score(part, equivalent)
        print(f"  {mod}: {k}/{c} = {100.0 * k / c if c else 0.0:.1f}% "
              f"({sum(1 for n in part if n in equivalent and part[n] not in KILLED)} equivalent left out)")
    for n in unlisted:
        print(f"  not killed: {n} ({status[n]})")
    if stale:
        print(f"  listed as equivalent but now killed (remove from {EQUIVALENT_FILE.name}): {', '.join(stale)}")
    if args.show:
        for n in unlisted:
            print(subprocess.run([str(exe), "show", n], cwd=work, capture_output=True, text=True, env=_env()).stdout)
    what = "re-test of the survivors" if args.retest else "mutmut run"
    print(f"mutation score: {killed}/{counted} = {pct:.1f}% of non-equivalent mutants killed "
          f"(goal {args.goal:g}%); {what} {wall:.0f} s with {args.jobs} jobs; work dir {work}")
    return 0 if pct >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
