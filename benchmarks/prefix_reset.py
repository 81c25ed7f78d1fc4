"""Time to reach a 10-step expert prefix in ALFWorld: naive (fresh reset + replay) against AlfWorldEnv.

Monte Carlo sampling reaches the same state many times (N rollouts start from it). For each of
``--games`` real games (the shared STeCa trajectories with at least ``--prefix`` actions) this
reaches the ``--prefix``-step state ``--reaches`` times, as N rollouts would:

* naive, as the released code does: load the game into a fresh TextWorld env (ALFWorld's
  wrappers), reset, replay the prefix;
* ours: ``AlfWorldEnv.reset_to_prefix`` on one env (the first reach loads and replays, later
  ones restore the cached snapshot).

Both run side by side in this process. Prints the median and mean seconds per reach, and as its
last line ``ratio=<median naive / median ours>``.

    python benchmarks/prefix_reset.py --data_dir ../shared/data/alfworld
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from eval_agent.envs.alfworld_env import AlfWorldEnv, clean_observation
from eval_agent.envs.alfworld_game_files import resolve_game_file
from eval_agent.types import parse_action
from steca.data.datacheck import episode_turns
from steca.records import load_sft


def naive_reach(game: Path, actions: list[str]) -> list[str]:
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    argv = list(sys.argv)
    env = textworld.start(str(game), request_infos=textworld.EnvInfos(won=True, admissible_commands=True,
                                                                      extras=["gamefile"]),
                          wrappers=[AlfredDemangler(), AlfredInfos])
    sys.argv[:] = argv
    env.reset()
    obs = [clean_observation(env.step(a)[0].feedback) for a in actions]
    env.close()
    return obs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="../shared/data/alfworld")
    p.add_argument("--sft_file", default=None, help="default: <data_dir>/alfworld_sft_sample.json")
    p.add_argument("--games", type=int, default=8)
    p.add_argument("--prefix", type=int, default=10)
    p.add_argument("--reaches", type=int, default=5, help="reaches of each state (the N of Monte Carlo)")
    args = p.parse_args()
    data = Path(args.data_dir)
    records = load_sft(args.sft_file or data / "alfworld_sft_sample.json", strict=True).records
    chosen = []
    for rec in records:
        actions = [a for a in (parse_action(t) for t, _ in episode_turns(rec)[1]) if a]
        if len(actions) >= args.prefix:
            chosen.append((rec.game_file, actions[: args.prefix]))
        if len(chosen) == args.games:
            break
    env = AlfWorldEnv(data, "train")
    naive_t, ours_t = [], []
    for game_file, actions in chosen:
        game = resolve_game_file(game_file, data)
        for _ in range(args.reaches):
            t0 = time.perf_counter()
            expected = naive_reach(game, actions)
            t1 = time.perf_counter()
            _, outs = env.reset_to_prefix(game_file, actions)
            t2 = time.perf_counter()
            assert [o.observation for o in outs] == expected, f"{game_file}: restored state differs from replay"
            naive_t.append(t1 - t0)
            ours_t.append(t2 - t1)
    n_med, o_med = statistics.median(naive_t), statistics.median(ours_t)
    print(f"games={len(chosen)} prefix={args.prefix} reaches_per_state={args.reaches} samples={len(naive_t)}")
    print(f"naive: median {n_med * 1000:.1f} ms, mean {statistics.mean(naive_t) * 1000:.1f} ms per reach")
    print(f"ours:  median {o_med * 1000:.2f} ms, mean {statistics.mean(ours_t) * 1000:.1f} ms per reach")
    print(f"mean_ratio={statistics.mean(naive_t) / statistics.mean(ours_t):.1f}")
    print(f"ratio={n_med / o_med:.1f}")


if __name__ == "__main__":
    main()
