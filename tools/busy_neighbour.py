"""Another job on the machine, on purpose: worker processes that each spin one core for a random
spell, rest for another, and so on, seeded, until --seconds have passed.

    .venv/bin/python tools/busy_neighbour.py --seconds 240 --workers 1 &
    .venv/bin/python tools/validate_latency_model.py --cells "" --issue ...

Why: issue 13 asks two latency tables of one model to agree within their stated spread "also
while other jobs share the machine". The machines here are shared, but how busy they are comes
and goes by the hour; this makes a run of the checks meet a neighbour whose load is known and
repeatable: on average `--busy` of each worker's time spinning, in spells of 0.2-3 s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import time


def neighbour(seed: int, seconds: float, busy: float) -> None:
    """Spin and rest in random spells (mean busy share `busy`) for `seconds`."""
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        spell = rng.uniform(0.2, 3.0)
        if rng.random() < busy:
            stop = min(end, time.monotonic() + spell)
            while time.monotonic() < stop:
                sum(i * i for i in range(1000))
        else:
            time.sleep(min(spell, max(0.0, end - time.monotonic())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, required=True, help="how long the neighbour stays")
    parser.add_argument("--workers", type=int, default=1, help="processes, one core each at most (default 1)")
    parser.add_argument("--busy", type=float, default=0.5, help="share of each worker's spells spent spinning (default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.seconds <= 0 or args.workers < 1 or not 0.0 <= args.busy <= 1.0:
        raise SystemExit("busy_neighbour: --seconds > 0, --workers >= 1 and --busy within [0, 1]")
    workers = [multiprocessing.Process(target=neighbour, args=(args.seed + i, args.seconds, args.busy)) for i in range(args.workers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
