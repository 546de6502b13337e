"""Load test of the Serve app over HTTP on 127.0.0.1: every request answered (200) or refused by backpressure (503).

    .venv/bin/python benchmarks/serve_load.py [--clients 8 32] [--requests 5] [--timeout-s 120]
                                              [--tight-ongoing 2 --tight-queued 4 | --no-tight]

Runs the documented deployment (serving/local_head.py): `ray start --head` in a temp dir on free ports,
`serve deploy serving/config.yaml` copied with a free HTTP port and `llm: none` (the surrogate's answer,
`"llm": false`; the LLM's own load figures are in docs/llm.md), `serve status` until RUNNING. Then, for
each client count, that many concurrent clients each send `--requests` POST /recommend in a row (closed
loop; meta-features drawn per request, seeded). Each request ends in one of: 200 (answered), 503
(refused by backpressure: Serve's max_ongoing_requests / max_queued_requests), another HTTP status,
"hung" (no answer within --timeout-s) or "lost" (connection refused or reset). Printed per phase:
those counts, latency p50 / p95 / max of the answered ones and of the refused ones, wall time and
answers per second.

Phase "tight" redeploys the same config with Serve's per-deployment overrides (the config's
`deployments:` list) giving the recommender max_ongoing_requests=--tight-ongoing and
max_queued_requests=--tight-queued, and runs the largest client count again: the requests beyond
those slots are refused at once with 503 and `Retry-After`, the others answered.

Exits 1 when any request was hung, lost or answered with another status. Stops by itself: every request
has a client timeout, every wait a deadline, and the head is ended (by its process ids) in any case.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from serving.local_head import REPO_ROOT, LocalHead, free_port, write_config

CONFIG = REPO_ROOT / "serving" / "config.yaml"
APP = "metallmix"


@dataclass
class Outcome:
    kind: str  # "200", "503", "other", "hung", "lost"
    latency_s: float
    detail: str = ""


def random_body(rng: random.Random) -> dict:
    """A plausible request with the LLM off: the Quick-Tune knowledge base's five meta-features."""
    n_classes = rng.randint(2, 100)
    n_images = rng.randint(max(500, 20 * n_classes), 200_000)
    return {"meta_features": {"n_images": n_images, "n_classes": n_classes, "class_size_mean": n_images / n_classes,
                              "resolution": rng.choice([28, 64, 128, 224]), "channels": rng.choice([1, 3])},
            "top_k": 5, "llm": False}


def post(port: int, body: dict, timeout_s: float) -> Outcome:
    data = json.dumps(body).encode()
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("POST", "/recommend", body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - started
        if response.status == 200:
            answer = json.loads(payload)
            if not {"config", "candidate_id", "predicted", "explanation", "evidence"} <= set(answer):
                return Outcome("other", elapsed, f"200 without the recommendation's fields: {sorted(answer)}")
            return Outcome("200", elapsed)
        if response.status == 503:
            return Outcome("503", elapsed, f"{response.getheader('Retry-After')}|{payload[:200].decode(errors='replace')}")
        return Outcome("other", elapsed, f"{response.status}: {payload[:300].decode(errors='replace')}")
    except TimeoutError:
        return Outcome("hung", time.perf_counter() - started, f"no answer within {timeout_s} s")
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        return Outcome("lost", time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


def run_phase(port: int, clients: int, requests: int, timeout_s: float, seed: int) -> tuple[list[Outcome], float]:
    def client(index: int) -> list[Outcome]:
        rng = random.Random(seed * 1000 + index)
        return [post(port, random_body(rng), timeout_s) for _ in range(requests)]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        outcomes = [o for batch in pool.map(client, range(clients)) for o in batch]
    return outcomes, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def summarise(name: str, clients: int, outcomes: list[Outcome], wall_s: float) -> dict:
    counts = {kind: sum(o.kind == kind for o in outcomes) for kind in ("200", "503", "other", "hung", "lost")}
    row = {"phase": name, "clients": clients, "requests": len(outcomes), **counts, "wall_s": round(wall_s, 1),
           "answers_per_s": round(counts["200"] / wall_s, 2)}
    for kind in ("200", "503"):
        latencies = [o.latency_s for o in outcomes if o.kind == kind]
        if latencies:
            row[f"p50_{kind}_s"] = round(percentile(latencies, 50), 3)
            row[f"p95_{kind}_s"] = round(percentile(latencies, 95), 3)
            row[f"max_{kind}_s"] = round(max(latencies), 3)
    refused = [o.detail for o in outcomes if o.kind == "503"]
    if refused:
        row["503_example"] = refused[0][:160]
    bad = [f"{o.kind}: {o.detail}" for o in outcomes if o.kind in ("other", "hung", "lost")]
    if bad:
        row["failures"] = bad[:5]
    return row


def print_row(row: dict) -> None:
    def lat(kind: str) -> str:
        if f"p50_{kind}_s" not in row:
            return "-"
        return f"{row[f'p50_{kind}_s']:.2f} / {row[f'p95_{kind}_s']:.2f} / {row[f'max_{kind}_s']:.2f}"

    print(f"| {row['phase']} | {row['clients']} | {row['requests']} | {row['200']} | {row['503']} | "
          f"{row['other']} | {row['hung']} | {row['lost']} | {lat('200')} | {lat('503')} | {row['wall_s']} | "
          f"{row['answers_per_s']} |", flush=True)
    for line in row.get("failures", []):
        print(f"    failure: {line}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--requests", type=int, default=5, help="requests per client, sent one after another")
    parser.add_argument("--timeout-s", type=float, default=120, help="a request not answered by then is 'hung'")
    parser.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the Ray head")
    parser.add_argument("--tight-ongoing", type=int, default=2)
    parser.add_argument("--tight-queued", type=int, default=4)
    parser.add_argument("--no-tight", action="store_true", help="skip the backpressure phase")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    temp_dir = Path(tempfile.mkdtemp(prefix="mlx-load-"))
    port = free_port()
    config = temp_dir / "config.yaml"
    write_config(CONFIG, config, port=port, args={"llm": "none"})
    rows = []
    try:
        with LocalHead(temp_dir, num_cpus=args.num_cpus) as head:
            started = time.monotonic()
            head.deploy(config)
            head.wait_running(APP, timeout_s=600)
            print(f"serve deploy {CONFIG.relative_to(REPO_ROOT)} (llm: none) RUNNING after "
                  f"{time.monotonic() - started:.0f} s; POST http://127.0.0.1:{port}/recommend, \"llm\": false, "
                  f"{args.requests} requests per client, client timeout {args.timeout_s:g} s", flush=True)
            post(port, random_body(random.Random(-1)), args.timeout_s)  # warm-up, not counted
            print("| phase | clients | requests | 200 | 503 | other | hung | lost | answered p50 / p95 / max s "
                  "| refused p50 / p95 / max s | wall s | answers/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|",
                  flush=True)
            for clients in args.clients:
                outcomes, wall = run_phase(port, clients, args.requests, args.timeout_s, args.seed + clients)
                rows.append(summarise("default", clients, outcomes, wall))
                print_row(rows[-1])
            if not args.no_tight:
                overrides = [{"name": "recommender", "max_ongoing_requests": args.tight_ongoing,
                              "max_queued_requests": args.tight_queued}]
                write_config(CONFIG, config, port=port, args={"llm": "none"}, deployments=overrides)
                redeployed = time.time()
                head.deploy(config)
                head.wait_running(APP, timeout_s=600, deployed_after=redeployed)
                clients = max(args.clients)
                outcomes, wall = run_phase(port, clients, args.requests, args.timeout_s, args.seed + 7919)
                name = f"tight (recommender {args.tight_ongoing} ongoing + {args.tight_queued} queued)"
                rows.append(summarise(name, clients, outcomes, wall))
                print_row(rows[-1])
                if "503_example" in rows[-1]:
                    retry_after, _, detail = rows[-1]["503_example"].partition("|")
                    print(f"    a 503: Retry-After {retry_after}; {detail}", flush=True)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    failed = sum(row["other"] + row["hung"] + row["lost"] for row in rows)
    total = sum(row["requests"] for row in rows)
    print(f"{total} requests: {sum(row['200'] for row in rows)} answered, {sum(row['503'] for row in rows)} refused "
          f"with 503, {failed} hung, lost or otherwise answered")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
