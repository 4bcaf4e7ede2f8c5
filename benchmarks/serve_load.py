"""Bounded loopback load test of the Serve app against in-process forward passes.

    flock /tmp/ecomtl-cpu.lock python benchmarks/serve_load.py            # MiniLM bundle, ~4 min
    RAY_SERVE_THROUGHPUT_OPTIMIZED=0 python benchmarks/serve_load.py      # Ray Serve's default mode
    python benchmarks/serve_load.py --bundle PATH --duration 10 --kill    # any bundle

Rows (same model, same real review texts, same machine):
  in-process   tokenise + forward + head in this process, one call after another
  shared       the platform: ingress → per-task head deployment → one shared encoder deployment
  naive        one full model per task deployment (ingress → head with its own encoder)
Each HTTP row runs a fixed number of client coroutines for a fixed duration after a
warm-up; single-text requests (1 text) and batched ones (32 texts). With ``--kill`` a
head replica, then the encoder replica, of the shared layout is killed (``ray.kill``)
in the middle of a load run and the failed requests are counted.

Without ``--bundle`` an untrained bundle of all-MiniLM-L6-v2 with the demo's six heads is
built once under /tmp (throughput does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from ecomtl.ray_env import serve_fast_path_defaults  # noqa: E402

# as `ecomtl serve` runs it; RAY_SERVE_THROUGHPUT_OPTIMIZED=0 in the environment measures Ray's defaults
SERVE_MODE = serve_fast_path_defaults()
TASK = "rating"


def minilm_bundle(dst: Path) -> str:
    from ecomtl.config.load import load_config
    from ecomtl.model.predictor import untrained_bundle

    if not (dst / "tasks.json").exists():
        untrained_bundle(load_config(REPO / "jobs" / "configs" / "demo.yaml"), dst)
    return str(dst)


def review_texts(n: int) -> list[str]:
    import pandas as pd

    from ecomtl.config.schema import resolve_data_root

    df = pd.read_csv(Path(resolve_data_root()) / "clothing_reviews" / "validation.csv")
    texts = (df["title"].fillna("") + " " + df["review_text"].fillna("")).str.strip()
    return [t for t in texts if t][:n]


def stats(latencies: list[float], n_requests: int, texts_per_request: int, seconds: float, failed: int) -> dict:
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"req_s": n_requests / seconds, "texts_s": n_requests * texts_per_request / seconds,
            "p50": np.percentile(lat, 50), "p95": np.percentile(lat, 95), "p99": np.percentile(lat, 99),
            "n": n_requests, "failed": failed}


def in_process(bundle: str, texts: list[str], per_call: int, duration: float, threads: int) -> dict:
    import torch

    from ecomtl.model.predictor import Predictor

    torch.set_num_threads(threads)
    pred = Predictor.from_bundle(bundle)
    batches = [texts[i:i + per_call] for i in range(0, len(texts) - per_call + 1, per_call)]
    for b in batches[:3]:  # warm-up
        pred.predict([TASK], b)
    lat, i, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        s = time.perf_counter()
        pred.predict([TASK], batches[i % len(batches)])
        lat.append(time.perf_counter() - s)
        i += 1
    return stats(lat, i, per_call, time.perf_counter() - t0, 0)


async def load(url: str, texts: list[str], per_call: int, concurrency: int, duration: float,
               warmup: float = 2.0, during=None) -> dict:
    """``concurrency`` closed-loop clients for warmup + duration seconds; only requests
    started after the warm-up count. ``during(elapsed)`` is polled by a side task."""
    bodies = [{"inputs": texts[i:i + per_call] if per_call > 1 else texts[i]}
              for i in range(0, len(texts) - per_call + 1, max(per_call, 1))]
    return await run_clients([(url, body) for body in bodies], per_call, concurrency, duration, warmup, during)


def mixed_requests(base: str, spec: dict, n: int = 256) -> list[tuple[str, dict]]:
    """Single-input requests spread over every task of the bundle, each with an input of
    its own source's kind (reviews, titles, queries, offer pairs; a ranking task gets a
    query and 4 candidates). texts/s counts requests (one input each) in this row."""
    import pandas as pd

    from ecomtl.config.schema import resolve_data_root

    root = Path(resolve_data_root())
    reviews = review_texts(n)
    titles = pd.read_csv(root / "flipkart_titles" / "validation.csv")["title"].dropna().tolist()[:n]
    queries = [" ".join(r) for r in pd.read_json(root / "queryner" / "validation.jsonl", lines=True)["tokens"][:n]]
    offers = pd.read_json(root / "abt_buy" / "validation.jsonl", lines=True)[["left", "right"]].values.tolist()[:n]
    by_source = {"reviews": reviews, "titles": titles, "queries": queries}
    out = []
    for i in range(n):
        for task, t in spec["tasks"].items():
            src = t["source"]
            if t["head"] == "ranking":
                body = {"query": offers[i][0], "candidates": [o[1] for o in offers[i:i + 4]]}
            elif spec["sources"][src]["kind"] == "pair":
                body = {"inputs": {"text": offers[i][0], "text_pair": offers[i][1]}}
            else:
                body = {"inputs": by_source.get(src, reviews)[i % len(by_source.get(src, reviews))]}
            out.append((f"{base}/v1/tasks/{task}", body))
    return out


async def run_clients(requests: list[tuple[str, dict]], per_call: int, concurrency: int, duration: float,
                      warmup: float = 2.0, during=None) -> dict:
    """Closed-loop clients cycling through ``requests`` (url, body)."""
    import aiohttp

    lat, failed, errors = [], 0, {}
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + duration

    async def client(k: int, session):
        nonlocal failed
        i = k
        while time.perf_counter() < t_end:
            s = time.perf_counter()
            url, body = requests[i % len(requests)]
            try:
                async with session.post(url, json=body) as r:
                    await r.read()
                    ok = r.status == 200
                    if not ok:
                        errors[r.status] = errors.get(r.status, 0) + 1
            except Exception as err:  # connection reset etc. count as failures too
                ok = False
                errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
            if s >= t_measure:
                if ok:
                    lat.append(time.perf_counter() - s)
                else:
                    failed += 1
            i += concurrency

    async def side():
        while during and time.perf_counter() < t_end:
            await during(time.perf_counter() - t_measure)
            await asyncio.sleep(0.1)

    conn = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(side(), *(client(k, session) for k in range(concurrency)))
    out = stats(lat, len(lat), per_call, duration, failed)
    out["errors"] = errors
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_args(bundle: str, layout: str, threads: int) -> dict:
    """Fixed replica counts (autoscaling is the test suite's subject, not this one's):
    one replica per deployment, as the naive baseline has."""
    fixed = {"min_replicas": 1, "max_replicas": 1}
    one = {"autoscaling_config": fixed}
    return {
        "bundle": bundle, "layout": layout, "max_items": 32,
        "ingress": {**one, "ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 512},
        "encoder": {**one, "ray_actor_options": {"num_cpus": 1}, "torch_threads": threads,
                    "batching": {"max_batch_size": 64, "batch_wait_timeout_s": 0.005}, "max_ongoing_requests": 256},
        "heads": {**one, "ray_actor_options": {"num_cpus": 0.1}, "torch_threads": threads if layout == "naive" else 1,
                  "batching": {"max_batch_size": 64, "batch_wait_timeout_s": 0.005}, "max_ongoing_requests": 256},
    }


def replica_actor(app: str, deployment: str):
    """A live replica actor of ``app:deployment`` (named ``SERVE_REPLICA::app#dep#id``
    in the ``serve`` namespace; no dashboard or state API needed)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] == "serve" and a["name"].startswith(prefix):
            return ray.get_actor(a["name"], namespace="serve"), a["name"]
    raise LookupError(f"no live replica of {app}:{deployment}")


def replica_counts(app: str) -> dict[str, int]:
    from ray import serve

    return {n: d.replica_states.get("RUNNING", 0) for n, d in serve.status().applications[app].deployments.items()}


def kill_run(base: str, texts: list[str], deployment: str, concurrency: int, duration: float, at: float) -> dict:
    """Single-text load; ``at`` seconds in, kill the one replica of ``deployment``."""
    import ray

    state = {"killed": None, "timeline": []}

    async def during(elapsed):
        if state["killed"] is None and elapsed >= at:
            handle, name = replica_actor("ecomtl", deployment)
            ray.kill(handle, no_restart=True)
            state["killed"] = (round(elapsed, 1), name)
        if state["killed"] is not None and (not state["timeline"] or elapsed - state["timeline"][-1][0] >= 1):
            state["timeline"].append((round(elapsed, 1), replica_counts("ecomtl")[deployment]))
            await asyncio.sleep(0)

    out = asyncio.run(load(f"{base}/v1/tasks/{TASK}", texts, 1, concurrency, duration, during=during))
    out.update(killed=state["killed"], timeline=state["timeline"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", help="default: an untrained MiniLM-L6 bundle with the demo's heads")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per row (after 2 s warm-up)")
    p.add_argument("--concurrency", type=int, default=32, help="clients sending single-text requests")
    p.add_argument("--batch-concurrency", type=int, default=4, help="clients sending 32-text requests")
    p.add_argument("--threads", type=int, default=2, help="torch threads (in-process and per model replica)")
    p.add_argument("--layouts", nargs="+", default=["shared", "naive"], choices=["shared", "naive"])
    p.add_argument("--kill", action="store_true", help="also kill a head and the encoder replica under load")
    a = p.parse_args(argv)

    import ray
    from ray import serve

    from ecomtl.model.bundle import read_spec
    from ecomtl.ray_env import runtime_env
    from ecomtl.serve.app import build_app, head_deployment_name

    bundle = a.bundle or minilm_bundle(Path("/tmp/ecomtl_bench/minilm_demo_bundle"))
    texts = review_texts(2048)
    print(f"bundle {bundle}; task {TASK!r}; {len(texts)} real review texts "
          f"(mean {np.mean([len(t.split()) for t in texts]):.0f} words); {os.cpu_count()} CPUs; "
          f"{a.duration:.0f} s per row; Ray Serve {SERVE_MODE}", flush=True)

    rows = []
    for per_call in (1, 32):
        rows.append(("in-process", f"{per_call} text{'s' if per_call > 1 else ''}/call", 1,
                     in_process(bundle, texts, per_call, a.duration, a.threads)))
        print(f"  in-process {per_call}/call done", flush=True)

    port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, runtime_env=runtime_env(), log_to_driver=False)
    kills = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        for layout in a.layouts:
            t = time.perf_counter()
            serve.run(build_app(app_args(bundle, layout, a.threads)), name="ecomtl", route_prefix="/")
            print(f"  {layout}: deployed in {time.perf_counter() - t:.0f} s", flush=True)
            url = f"{base}/v1/tasks/{TASK}"
            for per_call, conc in ((1, 1), (1, a.concurrency), (32, a.batch_concurrency)):
                r = asyncio.run(load(url, texts, per_call, conc, a.duration))
                rows.append((layout, f"{per_call} text{'s' if per_call > 1 else ''}/request", conc, r))
                print(f"  {layout} {per_call}×{conc}: {r['req_s']:.1f} req/s {r['texts_s']:.1f} texts/s p50 {r['p50']:.0f} "
                      f"p99 {r['p99']:.0f} ms, {r['failed']} failed {r['errors'] or ''}", flush=True)
            # every task at once, one input per request: the traffic a shared encoder is for
            r = asyncio.run(run_clients(mixed_requests(base, read_spec(bundle)), 1, a.concurrency, a.duration))
            rows.append((layout, f"mixed: all {len(read_spec(bundle)['tasks'])} tasks, 1 input/request", a.concurrency, r))
            print(f"  {layout} mixed×{a.concurrency}: {r['req_s']:.1f} req/s p50 {r['p50']:.0f} ms, {r['failed']} failed "
                  f"{r['errors'] or ''}", flush=True)
            if layout == "shared" and a.kill:
                for dep in (head_deployment_name(TASK), "encoder"):
                    try:
                        kills.append((dep, kill_run(base, texts, dep, a.concurrency, max(a.duration, 10), at=3.0)))
                        k = kills[-1][1]
                        print(f"  killed {k['killed']}: {k['n']} ok, {k['failed']} failed {k['errors'] or ''}", flush=True)
                    except Exception as err:  # report, keep the throughput table
                        print(f"  kill {dep} failed: {type(err).__name__}: {err}", flush=True)
                    print(f"  kill {dep} done", flush=True)
            serve.delete("ecomtl")
    finally:
        serve.shutdown()
        ray.shutdown()
        report(rows, kills, a)
    return 0


def report(rows, kills, a) -> None:
    print("\n| system | request | clients | requests/s | texts/s | p50 ms | p95 ms | p99 ms | failed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for system, what, conc, r in rows:
        print(f"| {system} | {what} | {conc} | {r['req_s']:.1f} | {r['texts_s']:.1f} | {r['p50']:.1f} | "
              f"{r['p95']:.1f} | {r['p99']:.1f} | {r['failed']} |")

    def find(system, what, conc=None):
        return next(r for s, w, c, r in rows if s == system and w.startswith(what) and (conc is None or c == conc))

    if not all(any(s == layout for s, *_ in rows) for layout in a.layouts):
        return

    ip1, ip32 = find("in-process", "1 text"), find("in-process", "32 texts")
    print()
    for layout in a.layouts:
        one, many, batched = find(layout, "1 text", 1), find(layout, "1 text", a.concurrency), find(layout, "32 texts")
        print(f"{layout}: single-text {many['texts_s'] / ip32['texts_s']:.2f}× and 32-text "
              f"{batched['texts_s'] / ip32['texts_s']:.2f}× of in-process 32-text throughput; "
              f"per-request overhead at 1 client: p50 {one['p50'] - ip1['p50']:.1f} ms over in-process 1-text p50 "
              f"({ip1['p50']:.1f} ms)")
    if len(a.layouts) == 2:
        s1, n1 = find("shared", "1 text", a.concurrency), find("naive", "1 text", a.concurrency)
        s32, n32 = find("shared", "32 texts"), find("naive", "32 texts")
        sm, nm = find("shared", "mixed"), find("naive", "mixed")
        print(f"shared / naive texts/s: single-text {s1['texts_s'] / n1['texts_s']:.2f}×, "
              f"32-text {s32['texts_s'] / n32['texts_s']:.2f}×, mixed-task requests/s "
              f"{sm['req_s'] / nm['req_s']:.2f}×")
    for dep, r in kills:
        print(f"\nkilled {r['killed'][1]} at {r['killed'][0]} s into a {a.concurrency}-client single-text run: "
              f"{r['n']} ok, {r['failed']} failed {r['errors'] or ''}; p99 {r['p99']:.0f} ms; "
              f"RUNNING replicas of {dep} each second after the kill: {[c for _, c in r['timeline']]}")


if __name__ == "__main__":
    sys.exit(main())
