"""`make compose-test`: the compose deployment, built and run for real.

Runs the repository's own docker-compose.yml under a private project name, with Redis and
Prometheus published on free loopback ports, and checks what a team deploying it relies on
(README: Deployment). Ends with exactly one line `compose test: N checks passed, M failed`
and exits 0 only when M is 0; removes every container, network and volume it made (and the
image it built), also on failure or Ctrl-C.

Environment (all optional): COMPOSE ("docker compose" or "docker-compose"; default: v2 when
the plugin is installed, else 1.29), BASE_IMAGES (auto: official images when present
locally, else the local stand-ins of deploy/images/build.sh; official; local),
COMPOSE_TEST_KEEP=1 (leave the stack up for a look; you clean up with `down -v`),
COMPOSE_TEST_REUSE=1 (while iterating on the test itself: build with the layer cache and keep
the image; never on CI).
Needs on the host: docker, a compose, redis-cli, and the project's .venv (for `forecast`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "forecast.json"
FORECAST = str(Path(sys.executable).with_name("forecast"))
SHARDS = 6
WORKERS = 3
N_STEPS = 3  # the window the compose test has the trainer use (FORECAST_N_STEPS)
GRACE_S = 30  # stop_grace_period of the worker service


class Abort(Exception):
    """A failed check that the later ones depend on."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "", fatal: bool = False) -> bool:
        if ok:
            self.passed += 1
            log(f"ok    {name}" + (f" ({detail})" if detail else ""))
        else:
            self.failed += 1
            log(f"FAIL  {name}" + (f": {detail}" if detail else ""))
            if fatal:
                raise Abort(name)
        return ok


def wait_until(what: str, cond: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Poll `cond` until it returns something truthy; raises TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # a poll may fail while things start; keep polling
            last_error = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s"
                               + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


def eventually(cond: Callable[[], Any], timeout: float, interval: float = 0.5) -> bool:
    """Whether `cond` became truthy within `timeout` (a check's verdict, never an exception)."""
    try:
        return bool(wait_until("", cond, timeout, interval))
    except TimeoutError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], check: bool = True, timeout: float = 600, env: dict[str, str] | None = None,
        quiet: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-30:]
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n" + "\n".join(tail))
    if not quiet and proc.returncode != 0:
        log(f"      ({shlex.join(cmd)} exited {proc.returncode})")
    return proc


def compose_command() -> list[str]:
    chosen = os.environ.get("COMPOSE")
    if chosen:
        return shlex.split(chosen)
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SystemExit("compose test: no `docker compose` plugin and no `docker-compose` found")


def default_of(var: str, text: str) -> str:
    """The default of `${VAR:-default}` (or `ARG VAR=default`) in a file's text."""
    m = re.search(r"\$\{" + var + r":-([^}]+)\}", text) or re.search(
        r"^ARG " + var + r"=(\S+)", text, re.M)
    if not m:
        raise RuntimeError(f"no default for {var}")
    return m.group(1)


def image_present(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def shard_of(series: str) -> int:
    return zlib.crc32(series.encode()) % SHARDS


def values_key(series: str) -> str:
    return f"forecast:values:{{{shard_of(series)}}}"


class Stack:
    """One compose project: the commands, the containers, Redis from the host."""

    def __init__(self) -> None:
        self.compose = compose_command()
        self.project = f"forecastct{os.getpid()}"
        self.redis_port = free_port()
        self.prom_port = free_port()
        self.image = "forecast-worker:compose-test"
        self.reuse = os.environ.get("COMPOSE_TEST_REUSE") == "1"
        self.env = dict(os.environ)
        for var in list(self.env):  # the host's FORECAST_* must not leak into the stack
            if var.startswith("FORECAST_"):
                del self.env[var]
        self.env.update(
            COMPOSE_PROJECT_NAME=self.project,
            COMPOSE_FILE=str(COMPOSE_FILE),
            REDIS_HOST_PORT=str(self.redis_port),
            PROMETHEUS_HOST_PORT=str(self.prom_port),
            GRAFANA_HOST_PORT=str(free_port()),
            WORKER_IMAGE=self.image,
            FORECAST_SHARDS=str(SHARDS),
            # the checks below count every prediction of v1 and then v2: no promotion on
            # evidence in between (the loop itself is tested by tests/test_continuous_learning)
            FORECAST_PROMOTE="manual",
            # ...and of a model of the tutorial's window (N_STEPS): the first prediction of a
            # series comes at its third value (the checks push few values per series)
            FORECAST_FORECASTER="rnn",
            FORECAST_N_STEPS=str(N_STEPS),
            # docker-compose 1.29 gives up on a request after 60 s; creating a container of
            # a 2 GB image takes longer than that on the vfs storage driver
            COMPOSE_HTTP_TIMEOUT="600",
            DOCKER_CLIENT_TIMEOUT="600",
        )
        self.url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.client: redis.Redis | None = None

    def c(self, *args: str, check: bool = True, timeout: float = 600,
          quiet: bool = False) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, "--project-directory", str(ROOT), *args], check=check,
                   timeout=timeout, env=self.env, quiet=quiet)

    def redis(self) -> redis.Redis:
        if self.client is None:
            self.client = redis.Redis.from_url(self.url, decode_responses=True,
                                               socket_timeout=10)
        return self.client

    def cli(self, *args: str) -> str:
        """Plain redis-cli from the host, through the published loopback port."""
        return run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port), *args]).stdout

    def forecast(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
        return run([FORECAST, *args, "--redis-url", self.url, "--shards", str(SHARDS)],
                   check=check, env=env)

    def containers(self, service: str, all_: bool = False) -> list[str]:
        cmd = ["docker", "ps", "-q", "--no-trunc",
               "--filter", f"label=com.docker.compose.project={self.project}",
               "--filter", f"label=com.docker.compose.service={service}"]
        if all_:
            cmd.append("-a")
        return run(cmd).stdout.split()

    def state(self, container: str) -> dict[str, Any]:
        out = run(["docker", "inspect", "-f", "{{json .State}}", container]).stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def health(self, container: str) -> str:
        return str((self.state(container).get("Health") or {}).get("Status", "none"))

    def inspect(self, container: str, fmt: str) -> str:
        return run(["docker", "inspect", "-f", fmt, container]).stdout.strip()

    def status(self) -> dict[str, Any]:
        """`forecast status`, as a user reads it: shard owners, workers alive and ready."""
        text = self.forecast("status").stdout
        shards, workers = {}, {}
        for line in text.splitlines():
            m = re.match(r"\s*(\d+)\s+forecast:values\S*\s+\d+\s+\S+\s+\S+\s+(\S+)", line)
            if m:
                shards[int(m.group(1))] = None if m.group(2) == "(unowned)" else m.group(2)
            m = re.match(r"(\S+-\d+)\s+(True|False)\s+(True|False|None)\s+(\S+)\s", line)
            if m:
                workers[m.group(1)] = {"alive": m.group(2) == "True",
                                       "ready": m.group(3) == "True", "model": m.group(4)}
        model = re.search(r"current model: (\S+)", text)
        return {"text": text, "shards": shards, "workers": workers,
                "model": model.group(1) if model else None}

    def fleet_ready(self, n: int, model: str | None = None) -> dict[str, Any] | None:
        """Every shard owned by a live, ready worker; n workers ready (serving `model`)."""
        st = self.status()
        ready = {w for w, s in st["workers"].items() if s["alive"] and s["ready"]
                 and (model is None or s["model"] == model)}
        owned = len(st["shards"]) == SHARDS and all(o in ready for o in st["shards"].values())
        return st if owned and len(ready) == n else None

    def cleanup(self) -> list[str]:
        """Remove everything of the project; returns what is still there afterwards."""
        try:  # removing a container of a 2 GB image takes a while on vfs
            self.c("--profile", "monitoring", "down", "-v", "--remove-orphans", "-t", "10",
                   check=False, timeout=900, quiet=True)
        except subprocess.TimeoutExpired:
            log("      compose down timed out; removing what is left one by one")
        for kind in ("container", "network", "volume"):
            cmd = ["docker", kind, "ls", "-q", "--filter",
                   f"label=com.docker.compose.project={self.project}"]
            if kind == "container":
                cmd = ["docker", "ps", "-aq", "--filter",
                       f"label=com.docker.compose.project={self.project}"]
            for ident in run(cmd, check=False).stdout.split():
                with suppress(subprocess.TimeoutExpired):
                    run(["docker", kind, "rm", "-f", ident], check=False, quiet=True)
        if not self.reuse:
            run(["docker", "image", "rm", "-f", self.image], check=False, quiet=True)
        left = []
        for cmd in (["docker", "ps", "-aq"], ["docker", "network", "ls", "-q"],
                    ["docker", "volume", "ls", "-q"]):
            out = run([*cmd, "--filter", f"label=com.docker.compose.project={self.project}"],
                      check=False).stdout.split()
            left += [f"{cmd[1]} {x}" for x in out]
        if image_present(self.image) and not self.reuse:
            left.append(f"image {self.image}")
        return left


# --- streams as seen from the host ---------------------------------------------------------

def predictions_of(client: redis.Redis, prefix: str) -> dict[str, list[dict[str, str]]]:
    """Every prediction of the series starting with `prefix`, per series, in stream order."""
    out: dict[str, list[dict[str, str]]] = {}
    last = "-"
    while True:
        batch = client.xrange("forecast:predictions", min=last, max="+", count=10_000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return out
        for _id, fields in batch:
            if fields.get("series", "").startswith(prefix):
                out.setdefault(fields["series"], []).append(fields)
        last = batch[-1][0]


def inputs_of(client: redis.Redis, prefix: str, series: list[str]) -> dict[str, list[str]]:
    """The entry ids of each series' inputs, in stream order."""
    ids: dict[str, list[str]] = {s: [] for s in series}
    for key in sorted({values_key(s) for s in series}):
        for entry_id, fields in client.xrange(key):
            if fields.get("series", "").startswith(prefix) and fields["series"] in ids:
                ids[fields["series"]].append(entry_id)
    return ids


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def exactly_once(client: redis.Redis, prefix: str, series: list[str]) -> tuple[bool, str]:
    """Every input of every series predicted exactly once, in input order."""
    preds = predictions_of(client, prefix)
    inputs = inputs_of(client, prefix, series)
    missing = dup = disorder = 0
    for s in series:
        expected = inputs[s][N_STEPS - 1:]
        got = [p["source_id"] for p in preds.get(s, [])]
        dup += len(got) - len(set(got))
        missing += len(set(expected) - set(got))
        disorder += sum(1 for a, b in itertools.pairwise(got) if id_key(a) >= id_key(b))
    total = sum(len(v) for v in preds.values())
    expected_total = sum(max(0, len(inputs[s]) - N_STEPS + 1) for s in series)
    detail = (f"{total}/{expected_total} predictions, missing {missing}, duplicated {dup}, "
              f"out of order {disorder}")
    return (missing == 0 and dup == 0 and disorder == 0 and total == expected_total), detail


def settled(client: redis.Redis, prefix: str, series: list[str]) -> bool:
    preds = predictions_of(client, prefix)
    inputs = inputs_of(client, prefix, series)
    return all(len(preds.get(s, [])) >= len(inputs[s]) - N_STEPS + 1 for s in series)


class Producer(threading.Thread):
    """Pushes `rounds` values to each series from the host, paced, in small pipelines."""

    def __init__(self, url: str, prefix: str, n_series: int, rounds: int, pace_s: float,
                 start: int = 0, bad: bool = False) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.series = [f"{prefix}{i}" for i in range(n_series)]
        self.rounds, self.pace_s, self.start_at = rounds, pace_s, start
        self.bad = bad  # one bad value (dead-lettered) per round besides the good ones
        self.sent = 0
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            for r in range(self.start_at, self.start_at + self.rounds):
                pipe = self.client.pipeline(transaction=False)
                for i, s in enumerate(self.series):
                    pipe.xadd(values_key(s), {"series": s, "value": str(100 * i + r)})
                if self.bad:
                    bad_series = self.series[0] + "-bad"
                    pipe.xadd(values_key(bad_series), {"series": bad_series, "value": "oops"})
                pipe.execute()
                self.sent += len(self.series)
                time.sleep(self.pace_s)
        except Exception as e:
            self.error = e


# --- the test ------------------------------------------------------------------------------

def base_images(t: Checks) -> dict[str, str]:
    """Official base images when present (or BASE_IMAGES=official), else local stand-ins."""
    compose_text, dockerfile = COMPOSE_FILE.read_text(), (ROOT / "Dockerfile").read_text()
    official = {
        "PYTHON_IMAGE": default_of("PYTHON_IMAGE", dockerfile),
        "REDIS_IMAGE": default_of("REDIS_IMAGE", compose_text),
        "PROMETHEUS_IMAGE": default_of("PROMETHEUS_IMAGE", compose_text),
    }
    assert official["PYTHON_IMAGE"] == default_of("PYTHON_IMAGE", compose_text)
    mode = os.environ.get("BASE_IMAGES", "auto")
    if mode == "official" or (mode == "auto" and all(map(image_present, official.values()))):
        log(f"base images: official ({', '.join(official.values())})")
        return official
    start = time.monotonic()
    proc = run([str(ROOT / "deploy" / "images" / "build.sh")], check=False, timeout=1200)
    for line in proc.stderr.strip().splitlines():
        log(f"      {line}")
    local = dict(re.findall(r"export (\w+)=(\S+)", proc.stdout))
    t.check("local base images built (deploy/images/build.sh)",
            proc.returncode == 0 and set(local) == set(official),
            f"{time.monotonic() - start:.0f} s; " + ", ".join(local.values()), fatal=True)
    return local


def build(t: Checks, st: Stack) -> None:
    dirty = run(["git", "-C", str(ROOT), "status", "--porcelain"], check=False).stdout.strip()
    if dirty:
        log("note: the working tree has uncommitted changes; building them")
    start = time.monotonic()
    # --no-cache: no cached layer can hide a broken Dockerfile or a dependency that no
    # longer installs; the image is built from the files at hand.
    no_cache = [] if st.reuse else ["--no-cache"]
    proc = st.c("build", *no_cache, "trainer", check=False, timeout=1500)
    took = time.monotonic() - start
    if proc.returncode != 0:
        log((proc.stdout + proc.stderr)[-4000:])
    how = " (layer cache: COMPOSE_TEST_REUSE=1)" if st.reuse else " (no cache)"
    t.check("project image builds" + how, proc.returncode == 0 and image_present(st.image),
            f"{took:.0f} s", fatal=True)
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", st.image]).stdout)
    log(f"      image {st.image}: {size / 1e6:.0f} MB, built in {took:.0f} s")


def up(t: Checks, st: Stack) -> None:
    start = time.monotonic()
    st.c("up", "-d", timeout=600)
    redis_c = wait_until("redis container", lambda: st.containers("redis"), 60)[0]
    healthy = eventually(lambda: st.health(redis_c) == "healthy", 120)
    t.check("redis healthy (redis-cli ping)", healthy,
            f"{time.monotonic() - start:.0f} s after up", fatal=True)
    aof = st.cli("CONFIG", "GET", "appendonly").split()
    t.check("redis runs with AOF on its volume", aof[-1:] == ["yes"], " ".join(aof))
    trainer = st.containers("trainer", all_=True)

    def first_model() -> str | None:
        if st.state(trainer[0])["Status"] == "exited":
            return "exited"
        return st.cli("GET", "forecast:model:current").strip() or None

    model = wait_until("the trainer's first model", first_model, 600, interval=1)
    s = st.state(trainer[0])
    t.check("trainer published the first model (from the CSV) and keeps watching the stream",
            model == "v1" and s["Status"] == "running",
            f"status {s['Status']}, current {model!r}, {time.monotonic() - start:.0f} s after up",
            fatal=True)
    worker = st.containers("worker")
    t.check("one worker container", len(worker) == 1, str(len(worker)), fatal=True)
    healthy = eventually(lambda: st.health(worker[0]) == "healthy", 180, interval=1)
    t.check("worker healthy by its healthcheck (forecast worker --check)", healthy,
            f"{time.monotonic() - start:.0f} s after up", fatal=True)
    image_contents(t, st, worker[0])
    for name, cid in (("worker", worker[0]), ("trainer", trainer[0])):
        ro = st.inspect(cid, "{{.HostConfig.ReadonlyRootfs}}")
        t.check(f"{name} runs with a read-only root file system", ro == "true", ro)
    probe = run(["docker", "exec", worker[0], "sh", "-c",
                 "id -u; touch /app/probe 2>/dev/null && echo root-writable; "
                 "touch /tmp/probe && echo tmp-writable"], check=False).stdout.split()
    t.check("worker: uid 10001, / not writable, /tmp writable",
            probe == ["10001", "tmp-writable"], " ".join(probe))
    limits = st.inspect(worker[0], "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}")
    log(f"      worker limits (NanoCpus Memory): {limits}")


def image_contents(t: Checks, st: Stack, worker: str) -> None:
    """Checked in a running worker: every extra container costs a copy of the image on vfs."""
    user = run(["docker", "image", "inspect", "-f", "{{.Config.User}}", st.image]).stdout.strip()
    uid, _, listing = run(["docker", "exec", worker, "sh", "-c",
                           "id -u; ls -A /app; find /app -name __pycache__ -o -name '*.pyc' "
                           "-o -path /app/bench/results | head -3"]).stdout.partition("\n")
    t.check("image runs as a non-root user", user not in ("", "0", "root") and uid != "0",
            f"USER {user}, uid {uid}")
    unwanted = {".venv", ".git", "tests", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                ".hypothesis", "deploy", "docs", ".env", "out", ".ci"}  # bench/: `forecast bench`
    found = sorted(set(listing.split()) & unwanted) + [
        x for x in listing.split() if "__pycache__" in x or x.endswith(".pyc") or
        x.endswith("bench/results")]
    t.check(".dockerignore keeps .venv, caches, tests and results out", not found,
            "/app holds: " + " ".join(listing.split()) + (f"; unwanted: {found}" if found else ""))


def host_io(t: Checks, st: Stack) -> None:
    c = st.redis()
    st.forecast("push", "host-push", "1", "2", "3", "4", "5")
    for v in ("10", "20", "30", "40"):
        st.cli("XADD", values_key("host-cli"), "*", "series", "host-cli", "value", v)
    # plain XREAD on the predictions stream, from its start, until both series are in
    def both() -> bool:
        preds = predictions_of(c, "host-")
        return len(preds.get("host-push", [])) == 3 and len(preds.get("host-cli", [])) == 2

    wait_until("host predictions", both, 60)
    raw = st.cli("XREAD", "COUNT", "100000", "STREAMS", "forecast:predictions", "0-0")
    t.check("redis-cli XREAD from the host reads the predictions",
            "host-push" in raw and "host-cli" in raw and "prediction" in raw)
    ok, detail = exactly_once(c, "host-", ["host-push", "host-cli"])
    preds = predictions_of(c, "host-")
    last = preds["host-push"][-1]
    t.check("forecast push + redis-cli XADD: one prediction per full window", ok,
            f"{detail}; after 1..5: {last['prediction']} by {last['model_version']}")
    bad = [("host-bad", "abc", "bad_value"), ("host-bad", "1e999", "value_not_finite")]
    for series, value, _ in bad:
        st.cli("XADD", values_key(series), "*", "series", series, "value", value)
    st.cli("XADD", "forecast:values:{0}", "*", "value", "1")

    def reasons() -> set[str]:
        return {f.get("reason", "") for _, f in c.xrange("forecast:deadletter")}

    want = {r for _, _, r in bad} | {"missing_series"}
    got = wait_until("dead letters", lambda: want <= reasons() and reasons(), 60)
    t.check("bad input is dead-lettered with its reason", want <= got, ", ".join(sorted(got)))


def scale(t: Checks, st: Stack) -> dict[str, Any]:
    start = time.monotonic()
    st.c("up", "-d", "--no-deps", "--scale", f"worker={WORKERS}", "worker")
    workers = wait_until("3 worker containers", lambda: len(st.containers("worker")) == WORKERS
                         and st.containers("worker"), 60)
    wait_until("workers healthy", lambda: all(st.health(w) == "healthy" for w in workers), 240,
               interval=1)
    fleet = wait_until("fleet ready", lambda: st.fleet_ready(WORKERS), 120)
    owners = sorted(set(fleet["shards"].values()))
    t.check(f"--scale worker={WORKERS}, FORECAST_SHARDS={SHARDS}: every shard owned, "
            "every worker ready and healthy", len(owners) == WORKERS,
            f"{time.monotonic() - start:.0f} s; owners {owners}")
    return fleet


def kill_mid_stream(t: Checks, st: Stack, fleet: dict[str, Any]) -> None:
    c = st.redis()
    prefix = "kill-"
    producer = Producer(st.url, prefix, n_series=60, rounds=150, pace_s=0.05)
    producer.start()
    wait_until("producer under way", lambda: producer.sent >= 60 * 40, 60, interval=0.1)
    # the container of a worker that owns shards: consumer names are <hostname>-<pid>
    owner = sorted(set(fleet["shards"].values()))[0]
    victim = next(w for w in st.containers("worker") if w.startswith(owner.rsplit("-", 1)[0]))
    run(["docker", "kill", victim])
    killed_at = time.monotonic()
    log(f"      killed {victim[:12]} ({owner}) after {producer.sent} values")
    producer.join(120)
    t.check("producer pushed every value through the kill", producer.error is None
            and producer.sent == 60 * 150, f"{producer.sent} values, error {producer.error}")
    series = producer.series
    wait_until("predictions settle", lambda: settled(c, prefix, series), 180, interval=1)
    took = time.monotonic() - killed_at
    ok, detail = exactly_once(c, prefix, series)
    t.check("docker kill of a worker mid-stream: every value predicted exactly once, in order",
            ok, f"{detail}; settled {took:.0f} s after the kill")
    restarted = st.state(victim)
    log(f"      killed container: {restarted['Status']}, restarts by policy: "
        f"{st.inspect(victim, '{{.RestartCount}}')}")
    if restarted["Status"] != "running":  # Docker does not restart a container killed by hand
        st.c("up", "-d", "--no-deps", "--scale", f"worker={WORKERS}", "worker")
    fleet = wait_until("fleet ready after the kill", lambda: st.fleet_ready(WORKERS), 180)
    t.check("after the kill: every shard owned, every worker ready", bool(fleet))


def restart_redis(t: Checks, st: Stack) -> None:
    c = st.redis()
    streams = ["forecast:predictions", "forecast:deadletter", "forecast:models"] + [
        f"forecast:values:{{{k}}}" for k in range(SHARDS)]
    hashes = [f"forecast:state:{{{k}}}" for k in range(SHARDS)]

    def snapshot() -> dict[str, Any]:
        return {
            **{s: c.xlen(s) for s in streams}, **{h: c.hlen(h) for h in hashes},
            "current": c.get("forecast:model:current"),
            "versions": c.zrange("forecast:model:versions", 0, -1),
            "blob": c.strlen(f"forecast:model:{c.get('forecast:model:current')}:blob"),
        }

    before = wait_until("lag 0", lambda: all(
        c.xinfo_groups(f"forecast:values:{{{k}}}")[0]["lag"] == 0 and
        c.xinfo_groups(f"forecast:values:{{{k}}}")[0]["pending"] == 0 for k in range(SHARDS))
        and snapshot(), 60)
    start = time.monotonic()
    st.c("restart", "redis")
    redis_c = st.containers("redis")[0]
    wait_until("redis healthy again", lambda: st.health(redis_c) == "healthy"
               and st.cli("PING").strip() == "PONG", 120)
    st.client = None
    c = st.redis()
    after = snapshot()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    t.check("restart redis: streams, checkpoints and registry kept (AOF volume)", not changed,
            f"{sum(1 for k in before)} keys compared; "
            f"{before['forecast:predictions']} predictions, "
            f"{sum(before[h] for h in hashes)} checkpoints" + (f"; changed {changed}" if changed
                                                                else ""))
    fleet = wait_until("fleet ready after the restart", lambda: st.fleet_ready(WORKERS), 180)
    t.check("workers reconnect: every shard owned, every worker ready", bool(fleet),
            f"{time.monotonic() - start:.0f} s after the restart")
    # the same series carry on: windows come from the checkpoints, no value twice
    producer = Producer(st.url, "kill-", n_series=60, rounds=20, pace_s=0.02, start=150)
    producer.run()
    series = producer.series
    wait_until("predictions settle", lambda: settled(c, "kill-", series), 120, interval=1)
    ok, detail = exactly_once(c, "kill-", series)
    t.check("after the restart: every value still predicted exactly once, in order", ok, detail)
    reconnects = sum(int(x) for x in re.findall(
        r"^forecast_redis_reconnects_total (\d+)", metrics_of(st), re.M))
    log(f"      forecast_redis_reconnects_total over the workers: {reconnects}")


def metrics_of(st: Stack) -> str:
    """/metrics of every worker, fetched inside the container (the port is not published)."""
    out = []
    for w in st.containers("worker"):
        out.append(run(["docker", "exec", w, "python3", "-c",
                        "import urllib.request;print(urllib.request.urlopen("
                        "'http://127.0.0.1:9108/metrics').read().decode())"]).stdout)
    return "\n".join(out)


def prom_get(st: Stack, path: str, **params: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{st.prom_port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def start_monitoring(st: Stack) -> None:
    st.c("--profile", "monitoring", "up", "-d", "--no-deps", "prometheus")


def monitoring(t: Checks, st: Stack) -> None:
    def targets() -> list[dict[str, Any]] | None:
        active = prom_get(st, "/api/v1/targets")["data"]["activeTargets"]
        mine = [a for a in active if a["labels"].get("job") == "forecast-worker"]
        up = [a for a in mine if a["health"] == "up"]
        return mine if len(mine) == WORKERS and len(up) == WORKERS else None

    found = wait_until("3 worker targets up", targets, 120, interval=1)
    ips = sorted(a["labels"]["instance"] for a in found)
    worker_ips = sorted(
        st.inspect(w, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}") + ":9108"
        for w in st.containers("worker"))
    t.check("prometheus scrapes every worker replica (dns_sd_configs: worker)",
            ips == worker_ips, ", ".join(ips))
    # traffic (and dead letters: a restarted worker's counters start from nothing), so that
    # rates and quantiles have data; two scrapes at least
    producer = Producer(st.url, "mon-", n_series=20, rounds=300, pace_s=0.1, bad=True)
    producer.start()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [(p.get("title", ""), t_["expr"]) for p in dashboard["panels"]
             for t_ in p.get("targets", [])]
    def evaluate(expr: str) -> str | None:
        """None when the expression evaluates and returns data, else why not."""
        q = (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
             .replace("$__range", "5m"))
        try:
            data = prom_get(st, "/api/v1/query", query=q)
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}: {e.read()[:200]!r}"
        if data.get("status") != "success":
            return str(data)
        result = data["data"]["result"]
        if not result:
            return "no data"
        if all(r["value"][1] in ("NaN", "+Inf", "-Inf") for r in result):
            return "only NaN"
        return None

    # Poll until every expression has returned data once (rates need two scrapes in range).
    pending = {expr for _, expr in exprs}
    bad: dict[str, str] = {}
    start = time.monotonic()
    while pending and time.monotonic() - start < 120:
        for expr in sorted(pending):
            why = evaluate(expr)
            if why is None:
                pending.discard(expr)
                bad.pop(expr, None)
            else:
                bad[expr] = why
        if pending:
            time.sleep(2)
    producer.join(60)
    t.check(f"all {len(exprs)} PromQL expressions of the Grafana dashboard evaluate and "
            "return data", not bad, f"{time.monotonic() - start:.0f} s" + (
                "; " + "; ".join(f"{e!r}: {why}" for e, why in bad.items()) if bad else ""))


def retrain(t: Checks, st: Stack) -> None:
    start = time.monotonic()
    proc = st.c("run", "--rm", "trainer", "train", "--csv", "/app/data/example.csv",
                "--epochs", "30", "--force", "--quiet", check=False, timeout=900)
    current = st.redis().get("forecast:model:current")
    t.check("docker compose run --rm trainer train ... publishes v2",
            proc.returncode == 0 and current == "v2",
            f"exit {proc.returncode}, current {current}, {time.monotonic() - start:.0f} s",
            fatal=False)
    if current != "v2":
        log((proc.stdout + proc.stderr)[-2000:])
        return
    fleet = wait_until("workers serve v2", lambda: st.fleet_ready(WORKERS, model="v2"), 120)
    t.check("every worker hot-reloads v2 (no restart)", bool(fleet),
            f"{time.monotonic() - start:.0f} s")
    restarts = [st.inspect(w, "{{.RestartCount}}") for w in st.containers("worker")]
    Producer(st.url, "retrain-", n_series=12, rounds=5, pace_s=0).run()
    wait_until("v2 predictions", lambda: settled(st.redis(), "retrain-",
                                                 [f"retrain-{i}" for i in range(12)]), 60)
    versions = {p["model_version"] for ps in predictions_of(st.redis(), "retrain-").values()
                for p in ps}
    t.check("new predictions come from v2", versions == {"v2"},
            f"versions {sorted(versions)}, restart counts {restarts}")


def stop(t: Checks, st: Stack) -> None:
    workers = st.containers("worker")
    trainer = st.containers("trainer")
    others = {svc: st.containers(svc) for svc in ("redis", "prometheus")}
    start = time.monotonic()
    st.c("--profile", "monitoring", "stop", timeout=GRACE_S + 120)
    took = time.monotonic() - start
    codes = [st.state(w)["ExitCode"] for w in workers]
    rest = {svc: [st.state(c)["ExitCode"] for c in cs] for svc, cs in others.items()}
    trained = [st.state(c)["ExitCode"] for c in trainer]
    t.check("docker compose stop: the watching trainer exits 0 (SIGTERM between trainings)",
            trained == [0] * len(trainer), f"trainer exit codes {trained}")
    t.check(f"docker compose stop: every worker exits 0 within the {GRACE_S} s grace period "
            "(SIGTERM to PID 1)", codes == [0] * len(workers) and took < GRACE_S,
            f"worker exit codes {codes}, the others {rest}, {took:.1f} s for the whole stack")
    proc = run(["docker", "logs", workers[0]], check=False)
    logs = proc.stdout + proc.stderr
    lines = [ln for ln in logs.splitlines() if "stop" in ln.lower() or "exit" in ln.lower()]
    if lines:
        log(f"      last words of {workers[0][:12]}: {lines[-1][:200]}")


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main() -> int:
    wall = time.monotonic()
    t = Checks()
    for tool in ("docker", "redis-cli"):
        if not shutil.which(tool):
            print(f"compose test: {tool} not found on PATH", file=sys.stderr)
            print("compose test: 0 checks passed, 1 failed")
            return 1
    st = Stack()
    versions = [run(["docker", "version", "-f", "{{.Server.Version}}"], check=False).stdout
                .strip(), run([*st.compose, "version"], check=False).stdout.splitlines()[:1]]
    log(f"docker engine {versions[0] or '(not reachable)'}; {shlex.join(st.compose)}: "
        f"{' '.join(versions[1])}; project {st.project}, redis on 127.0.0.1:{st.redis_port}, "
        f"prometheus on 127.0.0.1:{st.prom_port}")
    with interrupts_as_exceptions():
        try:
            t.check("docker engine reachable", bool(versions[0]), fatal=True)
            st.env.update(base_images(t))
            build(t, st)
            up(t, st)
            host_io(t, st)
            fleet = scale(t, st)
            start_monitoring(st)
            kill_mid_stream(t, st, fleet)
            restart_redis(t, st)
            monitoring(t, st)
            retrain(t, st)
            stop(t, st)
        except Abort as e:
            log(f"stopping after a failed check: {e}")
        except (Exception, KeyboardInterrupt) as e:
            t.check("no unexpected error", False, f"{type(e).__name__}: {e}")
            if st.client is not None or st.containers("redis", all_=True):
                with suppress(Exception):
                    log("forecast status:\n" + st.status()["text"])
                for svc in ("worker", "trainer", "redis"):
                    for cid in st.containers(svc, all_=True)[:1]:
                        logs = run(["docker", "logs", "--tail", "15", cid], check=False)
                        log(f"      logs of {svc} {cid[:12]}:\n{logs.stdout}{logs.stderr}")
        finally:
            if os.environ.get("COMPOSE_TEST_KEEP") == "1":
                log(f"COMPOSE_TEST_KEEP=1: the stack stays up (project {st.project})")
            else:
                left = st.cleanup()
                t.check("nothing left behind (containers, networks, volumes, image)", not left,
                        ", ".join(left))
    log(f"wall time {time.monotonic() - wall:.0f} s")
    print(f"compose test: {t.passed} checks passed, {t.failed} failed", flush=True)
    return 0 if t.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
