"""Load on `electra serve`, on 127.0.0.1 only, bounded in time and count: N concurrent clients send one
sentence per request for T seconds; requests/s, sentences/s, p50/p90/p99 latency, errors, and the
server's resident memory at the start and the end.

    # one point
    .venv/bin/python benchmarks/serve_load.py --model ft/sst2 --concurrency 16 --seconds 10
    # the sweep of BENCHMARKS.md: concurrency x --max-batch-size x backend, with the offline rate
    .venv/bin/python benchmarks/serve_load.py --model ft/sst2 --sweep --out benchmarks/results/serve
    # a soak: 70% of the peak rate for 10 minutes
    .venv/bin/python benchmarks/serve_load.py --model ft/sst2 --soak 600 --rate 70 --out benchmarks/results/serve
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "en" / "glue" / "SST-2" / "dev.tsv"


def sentences(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`electra serve` in a subprocess on 127.0.0.1, stopped with SIGTERM."""

    def __init__(self, model: str, backend: str, max_batch_size: int, threads: int | None):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "electra", "serve", "--model", model, "--port", str(self.port), "--backend",
               backend, "--max-batch-size", str(max_batch_size), "--max-queue", "100000"]
        if threads:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the server did not start: {self.proc.stderr.read()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=60)


async def load(url: str, texts: list[str], concurrency: int, seconds: float, rate: float | None = None) -> dict:
    """`concurrency` clients, each one request at a time, for `seconds`; with `rate` (requests/s over all
    clients) requests start on a fixed schedule instead of back to back."""
    import httpx

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    interval = concurrency / rate if rate else 0.0

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        n, next_start = k, time.perf_counter() + (k * interval / concurrency if rate else 0)
        while time.perf_counter() < stop:
            if rate:
                await asyncio.sleep(max(0.0, next_start - time.perf_counter()))
                next_start += interval
            started = time.perf_counter()
            try:
                r = await http.post(url + "/v1/predict", json={"inputs": [texts[n % len(texts)]]})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
            n += concurrency

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {"concurrency": concurrency, "seconds": round(elapsed, 1), "requests": len(latencies), "errors": errors,
            "requests_per_s": round(len(latencies) / elapsed, 1), "sentences_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * q[49], 1), "p90_ms": round(1000 * q[89], 1), "p99_ms": round(1000 * q[98], 1)}


def point(model: str, backend: str, max_batch_size: int, concurrency: int, seconds: float, texts: list[str],
          threads: int | None, rate: float | None = None) -> dict:
    server = Server(model, backend, max_batch_size, threads)
    try:
        asyncio.run(load(server.url, texts, min(concurrency, 4), 2.0))  # warm-up
        before = rss_mb(server.proc.pid)
        result = asyncio.run(load(server.url, texts, concurrency, seconds, rate))
        result.update(backend=backend, max_batch_size=max_batch_size, rss_start_mb=round(before, 1),
                      rss_end_mb=round(rss_mb(server.proc.pid), 1))
    finally:
        code = server.stop()
    result["exit_code"] = code
    print(json.dumps(result), file=sys.stderr)
    return result


def offline_rate(data: Path, size: str, backend: str) -> float:
    out = subprocess.run([sys.executable, "-m", "electra", "bench", "infer", "--model", size, "--data", str(data),
                          "--batch-size", "32", "--rounds", "3", "--backend", backend, "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["sequences_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a fine-tuned model directory")
    ap.add_argument("--size", default="small", help="its size, for the offline `electra bench infer` rate")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="sentences to send (a table, first column)")
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--sweep", action="store_true", help="concurrency 1,4,16,64 x batch 1,8,32,64 x both backends")
    ap.add_argument("--soak", type=float, help="seconds of load at --rate percent of the measured peak")
    ap.add_argument("--rate", type=float, default=70.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    texts = sentences(args.data)
    if args.sweep:
        sweep(args, texts)
    elif args.soak:
        soak(args, texts)
    else:
        print(json.dumps(point(args.model, args.backend, args.max_batch_size, args.concurrency, args.seconds, texts,
                               args.threads)))


def sweep(args, texts: list[str]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "serve_sweep.json"
    results = json.loads(path.read_text()) if path.exists() else {"points": [], "offline": {}}
    done = {(p["backend"], p["max_batch_size"], p["concurrency"]) for p in results["points"]}
    for backend in ("torch", "onnx"):
        if backend not in results["offline"]:
            results["offline"][backend] = offline_rate(args.data, args.size, backend)
        for batch in (1, 8, 32, 64):
            for conc in (1, 4, 16, 64):
                if (backend, batch, conc) not in done:  # finished points are kept: the sweep resumes
                    results["points"].append(point(args.model, backend, batch, conc, args.seconds, texts, args.threads))
                    path.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "serve_sweep.png")


def soak(args, texts: list[str]) -> None:
    peak = point(args.model, args.backend, args.max_batch_size, 64, 10, texts, args.threads)["requests_per_s"]
    result = point(args.model, args.backend, args.max_batch_size, 64, args.soak, texts, args.threads,
                   rate=peak * args.rate / 100)
    result.update(peak_requests_per_s=peak, target_percent=args.rate,
                  rss_growth_percent=round(100 * (result["rss_end_mb"] / result["rss_start_mb"] - 1), 2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"serve_soak_{args.backend}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for backend, style in (("torch", "-"), ("onnx", "--")):
        for batch in (1, 8, 32, 64):
            pts = sorted((p["concurrency"], p["sentences_per_s"], p["p99_ms"]) for p in results["points"]
                         if p["backend"] == backend and p["max_batch_size"] == batch)
            if pts:
                c, s, p99 = zip(*pts)
                axes[0].plot(c, s, style, marker="o", label=f"{backend}, batch {batch}")
                axes[1].plot(c, p99, style, marker="o", label=f"{backend}, batch {batch}")
        if backend in results["offline"]:
            axes[0].axhline(results["offline"][backend], linestyle=style, color="gray", linewidth=0.8)
    for ax, title in zip(axes, ("sentences/s (gray: offline `bench infer`)", "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
