"""LLM client throughput against a local scripted server: concurrency bound and cache replay.

Each request takes ``--delay-ms`` on the server (a stand-in for model latency). Prints wall time
for the same batch of requests at several concurrency bounds, then the time to replay the batch
from the SQLite response cache. Ends with ``RESULT name=value`` lines.

    python benchmarks/bench_llm.py --requests 64 --delay-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from operators.base import LLMRequest
from workflow_rl.llm import OpenAICompatibleClient, ResponseCache
from workflow_rl.llm.testing import ScriptedOpenAIServer, ScriptedReply


async def batch(client: OpenAICompatibleClient, n: int) -> float:
    """Wall seconds to complete ``n`` distinct chat requests concurrently."""
    t0 = time.perf_counter()
    await asyncio.gather(*(client.complete(LLMRequest(messages=(("user", f"q{i}"),))) for i in range(n)))
    return time.perf_counter() - t0


def main() -> None:
    """Run the measurements and print the table and RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per batch")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="server-side latency per request")
    args = parser.parse_args()
    with ScriptedOpenAIServer(lambda req: ScriptedReply(text="ok", delay_s=args.delay_ms / 1000)) as server:
        print(f"{args.requests} requests, {args.delay_ms:.0f} ms each on the server")
        print(f"{'concurrency':>12} {'wall_s':>8} {'req/s':>8}")
        results = {}
        for bound in (1, 8, 32):
            client = OpenAICompatibleClient(server.url, "m", max_concurrency=bound, adaptive_concurrency=False)
            wall = asyncio.run(batch(client, args.requests))
            results[bound] = wall
            print(f"{bound:>12} {wall:>8.3f} {args.requests / wall:>8.1f}")
        with tempfile.TemporaryDirectory() as tmp:
            cache = ResponseCache(Path(tmp) / "llm.sqlite")
            client = OpenAICompatibleClient(server.url, "m", max_concurrency=32, adaptive_concurrency=False,
                                            cache=cache)
            fresh = asyncio.run(batch(client, args.requests))
            before = server.request_count
            replay = asyncio.run(batch(client, args.requests))
            assert server.request_count == before, "cache replay reached the server"
            print(f"cache: fresh {fresh:.3f}s, replay {replay:.3f}s (0 server requests)")
    print(f"RESULT llm_req_per_s_c1={args.requests / results[1]:.1f}")
    print(f"RESULT llm_req_per_s_c8={args.requests / results[8]:.1f}")
    print(f"RESULT llm_req_per_s_c32={args.requests / results[32]:.1f}")
    print(f"RESULT llm_cache_replay_speedup={fresh / replay:.1f}")


if __name__ == "__main__":
    main()
