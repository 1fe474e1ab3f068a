"""Load on ``etagent serve-retriever`` and ``etagent serve-model``: many concurrent keep-alive
clients, latency percentiles, errors by kind, the server's memory before and after; then the same
load while other clients send oversized requests, with the request limits on and (retriever) off,
all measured in the same run.

Each server runs as the real command in a subprocess (its memory and CPU time are read from
/proc). Windows of normal load alone and with abuse alternate, so that other jobs on a shared
machine weigh on both conditions alike. Normal clients are asyncio tasks in this process, each with its own ``httpx.AsyncClient``
(own keep-alive pool, no retries), so every transport error is counted, not hidden by a retry.
Abusive clients run in a second process, so that their uploads do not slow this one's event loop.

* retriever: the tool world's corpus; each request one tool-world question (``POST /search``,
  top 3). Abuse: ``--abusers`` clients each sending a ``--abuse-mib`` MiB query once a second, or
  back to back while the server takes longer. With the limits off (``--max-body-mb`` and
  ``--max-query-chars`` raised) this is the reported fault: such queries are read, parsed and
  searched while normal queries wait.
* model: the tiny random model (``serve-model --model tiny``); each request a 24-token prompt,
  8 new tokens, greedy. Abuse: once a second per abusive client, a 40 MiB body, ``n`` = 100,000,
  or a prompt past the context window.

    .venv/bin/python benchmarks/bench_load.py [--clients 64] [--window 6] [--rounds 3] [--skip-model]

The default run takes about 2-3 minutes on 2 cores (clients and server share them: the figures
are what a busy CPU machine gives, not the server's ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from etagent.runtime import free_port

JSON = {"content-type": "application/json"}


@dataclass
class Server:
    url: str
    pid: int

    def memory_mib(self) -> tuple[float, float]:
        """(resident now, peak resident since start) in MiB, from /proc/<pid>/status."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def cpu_s(self) -> float:
        """User + system CPU seconds the server has used, from /proc/<pid>/stat."""
        parts = Path(f"/proc/{self.pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def launch(*args: str, health: str = "/health", timeout: float = 300) -> Iterator[Server]:
    """``etagent <args>`` in a subprocess, on a free port; yields it once ``health`` answers 200."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "etagent.cli", *args, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"etagent {args[0]} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + health, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"etagent {args[0]} did not become healthy in {timeout:g} s")
            time.sleep(0.3)
        yield Server(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    #: CPU seconds of the client process while these clients ran (they had it to themselves)
    cpu_s: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    def line(self) -> str:
        lat = sorted(self.latencies)
        if lat:
            p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
            timing = (
                f"p50 {self.p50() * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  max {lat[-1] * 1000:7.1f} ms"
            )
        else:
            timing = "no answers"
        statuses = " ".join(f"{code}x{n}" for code, n in sorted(self.statuses.items())) or "-"
        errors = " ".join(f"{kind}x{n}" for kind, n in sorted(self.errors.items())) or "none"
        rate = self.requests / self.elapsed if self.elapsed else 0.0
        return (
            f"{self.requests:6d} requests {rate:7.1f}/s  {timing}  HTTP {statuses}  "
            f"transport errors: {errors}  client CPU {self.cpu_s:.1f} s"
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "latencies": self.latencies,
                "statuses": dict(self.statuses),
                "errors": dict(self.errors),
                "elapsed": self.elapsed,
                "cpu_s": self.cpu_s,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Stats:
        d = json.loads(text)
        return cls(
            d["latencies"],
            Counter({int(k): v for k, v in d["statuses"].items()}),
            Counter(d["errors"]),
            d["elapsed"],
            d["cpu_s"],
        )


Request = Callable[[httpx.AsyncClient, random.Random], Awaitable[httpx.Response]]


async def _client(
    request: Request, stats: Stats, stop: float, seed: int, timeout: float, interval: float = 0.0
) -> None:
    """Send ``request`` until ``stop``: back to back, or (``interval`` > 0) at most one per ``interval`` s."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=timeout) as client:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                response = await request(client, rng)
            except httpx.HTTPError as e:
                stats.errors[type(e).__name__] += 1
            else:
                stats.latencies.append(time.perf_counter() - t0)
                stats.statuses[response.status_code] += 1
            if interval > 0:
                wait = min(t0 + interval - time.perf_counter(), stop - time.monotonic())
                await asyncio.sleep(max(0.0, wait))


async def _clients(
    request: Request, n: int, seconds: float, interval: float = 0.0, timeout: float = 120.0
) -> Stats:
    stats = Stats()
    stop = time.monotonic() + seconds
    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(_client(request, stats, stop, i, timeout, interval) for i in range(n)))
    stats.elapsed = time.perf_counter() - t0
    stats.cpu_s = time.process_time() - cpu0
    return stats


# --------------------------------------------------------------------------------------------
# abusive clients (a second process: python bench_load.py --abuse-worker KIND ...)


def _abusive_requests(kind: str, mib: int) -> list[tuple[str, bytes]]:
    """(path, JSON body) of the oversized requests one abusive client picks from."""
    if kind == "retriever":
        query = "tower " * (mib * 2**20 // 6)
        return [("/search", json.dumps({"query": query, "top_n": 3}).encode())]
    return [
        ("/v1/completions", json.dumps({"model": "tiny", "prompt": [7] * (40 * 2**20 // 3)}).encode()),
        ("/v1/completions", json.dumps({"model": "tiny", "prompt": "hello", "n": 100_000}).encode()),
        ("/v1/completions", json.dumps({"model": "tiny", "prompt": [7] * 4090, "max_tokens": 100}).encode()),
    ]


def abuse_worker(args: argparse.Namespace) -> int:
    bodies = _abusive_requests(args.abuse_worker, args.abuse_mib)  # encoded once, before the clock

    async def abuse(client: httpx.AsyncClient, rng: random.Random) -> httpx.Response:
        path, body = rng.choice(bodies)
        return await client.post(args.url + path, content=body, headers=JSON)

    print("ready", flush=True)
    sys.stdin.readline()  # the parent's go
    stats = asyncio.run(_clients(abuse, args.abusers, args.window, interval=1.0))
    print(stats.to_json(), flush=True)
    return 0


def run_phase(
    normal: Request,
    clients: int,
    seconds: float,
    url: str,
    args: argparse.Namespace,
    abuse: str | None = None,
) -> tuple[Stats, Stats | None]:
    """``clients`` normal clients for ``seconds``; with ``abuse``, ``args.abusers`` abusive ones
    meanwhile (each once a second; requests in flight at the end are waited for)."""
    if abuse is None:
        return asyncio.run(_clients(normal, clients, seconds)), None
    worker = subprocess.Popen(
        [sys.executable, __file__, "--abuse-worker", abuse, "--url", url, "--abusers", str(args.abusers),
         "--abuse-mib", str(args.abuse_mib), "--window", str(seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert worker.stdin is not None and worker.stdout is not None
    if worker.stdout.readline().strip() != "ready":
        raise SystemExit("the abusive clients' process did not start")
    worker.stdin.write("go\n")
    worker.stdin.flush()
    good = asyncio.run(_clients(normal, clients, seconds))
    out, _ = worker.communicate(timeout=600)
    return good, Stats.from_json(out.strip().splitlines()[-1])


def merge(parts: list[Stats]) -> Stats:
    out = Stats()
    for part in parts:
        out.latencies += part.latencies
        out.statuses += part.statuses
        out.errors += part.errors
        out.elapsed += part.elapsed
        out.cpu_s += part.cpu_s
    return out


def alternate(
    normal: Request, clients: int, url: str, args: argparse.Namespace, abuse: str, rounds: int
) -> tuple[Stats, Stats, Stats]:
    """``rounds`` x (a window of normal load alone, a window of it with abusive clients): the two
    conditions interleaved, so that other jobs on the machine weigh on both alike. Returns the
    normal clients' stats alone and with abuse, and the abusive clients' stats."""
    plain, abused, bad = [], [], []
    for _ in range(rounds):
        plain.append(run_phase(normal, clients, args.window, url, args)[0])
        good, worse = run_phase(normal, clients, args.window, url, args, abuse=abuse)
        assert worse is not None
        abused.append(good)
        bad.append(worse)
    return merge(plain), merge(abused), merge(bad)


def report(server: Server, before: tuple[float, float], cpu0: float, rows: list[tuple[str, Stats]]) -> None:
    after = server.memory_mib()
    print(f"    (load average {os.getloadavg()[0]:.2f})")
    for label, stats in rows:
        print(f"    {label:<19} {stats.line()}")
    print(
        f"    server: {before[0]:.0f} MiB before, {after[0]:.0f} MiB after, peak {after[1]:.0f} MiB "
        f"(was {before[1]:.0f}); {server.cpu_s() - cpu0:.1f} CPU s"
    )


# --------------------------------------------------------------------------------------------
# serve-retriever


def retriever_bench(args: argparse.Namespace) -> None:
    from etagent.tasks import resolve_task

    questions = [q.question for q in resolve_task("toolworld").questions("train")]
    url = ""

    async def search(client: httpx.AsyncClient, rng: random.Random) -> httpx.Response:
        return await client.post(url + "/search", json={"query": rng.choice(questions), "top_n": 3})

    n, w = args.clients, args.window
    print(
        f"serve-retriever (tool world corpus, BM25): {n} keep-alive clients; abuse: {args.abusers} "
        f"clients each sending a {args.abuse_mib} MiB query a second"
    )
    print(f"  default limits: {args.rounds} x ({w:g} s of normal load alone, {w:g} s with abuse)")
    with launch("serve-retriever", "--task", "toolworld") as server:
        url = server.url
        run_phase(search, 4, 2.0, url, args)  # warm-up: imports, caches, connections
        before, cpu0 = server.memory_mib(), server.cpu_s()
        plain, limited, bad = alternate(search, n, url, args, "retriever", args.rounds)
        report(
            server,
            before,
            cpu0,
            [("normal, alone", plain), ("normal, with abuse", limited), ("abusive", bad)],
        )

    # the limits raised past the abusive requests: the server as it was before the limits
    print(f"  limits OFF: {w:g} s of normal load alone, {w:g} s with abuse (its requests are waited for)")
    unlimited = ("--max-body-mb", str(4 * args.abuse_mib), "--max-query-chars", str(args.abuse_mib * 2**20))
    with launch("serve-retriever", "--task", "toolworld", *unlimited) as server:
        url = server.url
        run_phase(search, 4, 2.0, url, args)
        before, cpu0 = server.memory_mib(), server.cpu_s()
        plain_off, free, bad = alternate(search, n, url, args, "retriever", 1)
        report(
            server,
            before,
            cpu0,
            [("normal, alone", plain_off), ("normal, with abuse", free), ("abusive", bad)],
        )
    print(
        f"  normal p50 with abuse / alone: limits on {limited.p50() / plain.p50():.2f}x, "
        f"limits off {free.p50() / plain_off.p50():.2f}x"
    )


# --------------------------------------------------------------------------------------------
# serve-model


def model_bench(args: argparse.Namespace) -> None:
    body = {"model": "tiny", "prompt": list(range(1000, 1024)), "max_tokens": 8, "temperature": 0}
    url = ""

    async def complete(client: httpx.AsyncClient, rng: random.Random) -> httpx.Response:
        return await client.post(url + "/v1/completions", json=body)

    n, w = args.model_clients, args.window
    print(
        f"serve-model (tiny random model, 24-token prompts, 8 new tokens): {n} keep-alive clients; "
        f"abuse: {args.abusers} clients each sending a second a 40 MiB body, n=100000 or a prompt "
        "past the context window"
    )
    print(f"  {args.rounds} x ({w:g} s of normal load alone, {w:g} s with abuse)")
    with launch("serve-model", "--model", "tiny", "--set", "hf.threads=1") as server:
        url = server.url
        run_phase(complete, 2, 2.0, url, args)
        before, cpu0 = server.memory_mib(), server.cpu_s()
        plain, abused, bad = alternate(complete, n, url, args, "model", args.rounds)
        report(
            server, before, cpu0, [("normal, alone", plain), ("normal, with abuse", abused), ("abusive", bad)]
        )
    print(f"  normal p50 with abuse / alone: {abused.p50() / plain.p50():.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64, help="concurrent retriever clients")
    ap.add_argument("--model-clients", type=int, default=16, help="concurrent serve-model clients")
    ap.add_argument("--window", type=float, default=6.0, help="seconds of each load window")
    ap.add_argument("--rounds", type=int, default=3, help="pairs of windows (alone, with abuse) per server")
    ap.add_argument("--abusers", type=int, default=8, help="clients sending oversized requests")
    ap.add_argument("--abuse-mib", type=int, default=10, help="size of an abusive retriever query, MiB")
    ap.add_argument("--skip-retriever", action="store_true")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--abuse-worker", choices=["retriever", "model"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.abuse_worker:
        return abuse_worker(args)
    print(
        f"{os.cpu_count()} cores, shared by the server, the clients and the abusive clients; load "
        f"average {os.getloadavg()[0]:.2f} at the start"
    )
    t0 = time.perf_counter()
    if not args.skip_retriever:
        retriever_bench(args)
    if not args.skip_model:
        model_bench(args)
    print(f"total {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
