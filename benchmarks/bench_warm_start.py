"""What the format warm start leaves: SmolLM2 before and after, on train, validation and test of calc.

For the raw base (``builtin:smollm2``, the chat prompt with whole operator descriptions, as every
pretrained base without a warm start is asked) and the warm-started base the ``smollm2-cpu`` preset
starts from (``LoopConfig.warm_start`` steps, short operator rendering, cached on disk), the greedy
policy writes one program per problem for the first ``--problems`` problems of each split, at the
preset's ``max_new_tokens``. Prints the valid-program rate and the per-query accuracy of each, and
how long the warm start took (0 when it was cached already: its manifest keeps the build's time).
``--raw-short`` adds the raw base asked the short rendering (the prompt's share of the change).

Usage: ``python benchmarks/bench_warm_start.py [--problems 8] [--raw-short] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from storage.engine import open_db
from workflow_rl.loop.config import LoopConfig
from workflow_rl.loop.driver import base_policy
from workflow_rl.loop.policy_eval import evaluate_policy
from workflow_rl.policy.formats import FORMAT_FILE
from workflow_rl.policy.pretrained import BUILTIN_SMOLLM2, resolve_pretrained
from workflow_rl.policy.warm_start import MANIFEST
from workflow_rl.tasks import get_benchmark
from workflow_rl.tasks.calc import CalcBenchmark

SPLITS = ("train", "validation", "test")


def short_copy(raw: str, root: Path) -> str:
    """A copy of the raw base's directory that asks the short rendering (same weights)."""
    target = root / "raw-short"
    if not target.exists():
        shutil.copytree(raw, target)
        (target / FORMAT_FILE).write_text(json.dumps({"operators": "short"}) + "\n")
    return str(target)


def main() -> None:
    """Measure and print one line per base and split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8, help="First problems of each split measured.")
    parser.add_argument("--raw-short", action="store_true", help="Also the raw base with the short rendering.")
    parser.add_argument("--out", default=None, help="Directory for the database (default: temp).")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-warm-start-"))
    out.mkdir(parents=True, exist_ok=True)
    engine = open_db(str(out / "bench.db"))
    config = LoopConfig.from_preset("smollm2-cpu")
    t0 = time.perf_counter()
    warm = base_policy(config, get_benchmark("calc"), print)
    built = time.perf_counter() - t0
    manifest = json.loads((Path(warm) / MANIFEST).read_text())
    print(f"warm start: {config.warm_start} steps into {warm} ({built:.0f} s here; loss "
          f"{manifest['first_loss']:.3f} -> {manifest['last_loss']:.3f}; build time "
          f"{manifest.get('seconds', 'not recorded')} s)")
    bases = {"raw (full prompt)": BUILTIN_SMOLLM2, "warm-started (short prompt)": warm}
    if args.raw_short:
        bases["raw (short prompt)"] = short_copy(resolve_pretrained(BUILTIN_SMOLLM2), out)
    n = args.problems
    bench = CalcBenchmark(train_size=n, validation_size=n, test_size=n)
    print(f"greedy, first {n} problems of each split, max_new_tokens={config.max_new_tokens}")
    print(f"{'base':<28} {'split':<10} {'valid':>6} {'accuracy':>8} {'seconds':>7}")
    for label, base in bases.items():
        for split in SPLITS:
            t = time.perf_counter()
            result = evaluate_policy(engine, base, split, benchmark=bench, max_new_tokens=config.max_new_tokens,
                                     run=f"eval/{label}/{split}")
            print(f"{label:<28} {split:<10} {result.valid_fraction:>6.3f} {result.accuracy:>8.3f} "
                  f"{time.perf_counter() - t:>7.0f}", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s; data in {out}")


if __name__ == "__main__":
    main()
