"""Lost saves: input raced against the election's timers, counted trial by trial.

The reproduction of a bug the earlier driver had on asyncio: the cancel
scope that woke a sleeping node covered more than the sleep, so a wake-up
that landed just after the sleep ended cancelled the next checkpoint
instead, the ``storage.save`` of a new term or vote, and the node went on as
if it had saved.  Each trial is one of the driver race tests'
(``tests/driver/races.py``): node ``a`` against two peers that answer at
random, a storage whose ``save`` yields (sometimes through a thread), and
input aimed at the node's deadlines.  A trial *loses a save* when the node
sends something its storage did not hold yet, or ends on a state its
storage does not hold.  The harness uses only what every version has, so
the same script measures an older checkout too::

    python benchmarks/lost_saves.py                       # 1,000 trials on asyncio and on trio
    PYTHONPATH=/path/to/old/checkout python benchmarks/lost_saves.py --trials 300
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
from _perf_common import load_average, machine, table, write_json

import almost_raft

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.driver.races import check, run_trial


async def _run(trials: int) -> dict[str, object]:
    lost = 0
    examples: list[str] = []
    start = time.perf_counter()
    for seed in range(trials):
        problems = check(await run_trial(seed))
        if problems:
            lost += 1
            examples.append(f"seed {seed}: {problems[0]}")
    return {"trials": trials, "lost": lost, "seconds": time.perf_counter() - start, "examples": examples[:10]}


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
    args = parser.parse_args(argv)
    load_before = load_average()
    results = []
    for backend in args.backends:
        result = anyio.run(_run, args.trials, backend=backend)
        result["backend"] = backend
        results.append(result)
    print(f"lost saves: input raced against timers, real time (almost_raft from {Path(almost_raft.__file__).parent})")
    print(f"load average (1 min) before/after: {load_before:.2f}/{load_average():.2f}")
    print(
        table(
            ["backend", "trials", "trials with a lost save", "seconds"],
            [[r["backend"], r["trials"], r["lost"], r["seconds"]] for r in results],
        )
    )
    for r in results:
        for example in r["examples"]:  # type: ignore[attr-defined]
            print(f"  {r['backend']}: {example}")
    data: dict[str, object] = {"machine": machine(), "results": results, "package": almost_raft.__file__}
    print(f"\nJSON: {write_json('lost_saves', data)}")
    return data


if __name__ == "__main__":
    main()
