"""Security: TLS (rediss://), the ACL users of docs/redis-acl.md, and no secrets in logs.

Each test runs its own redis-server: one with TLS only (certificates made here with the
`openssl` CLI), one with the documented ACL file. Workers are real `forecast worker`
processes; their whole output is searched for the password.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from forecast import keys, processes, registry
from forecast.client import Producer
from forecast.local_redis import RedisServer, free_port, redis_server_binary
from forecast.processes import wait_until
from tests import procs

pytestmark = [pytest.mark.slow, pytest.mark.tf]

ACL_DOC = Path(__file__).resolve().parent.parent / "docs" / "redis-acl.md"


# --- TLS -----------------------------------------------------------------------------------

def make_certs(d: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1, with the openssl CLI."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=forecast-test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[str]:
    """A TLS-only redis-server (plain port disabled); yields its rediss:// URL."""
    binary = redis_server_binary()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("redis-server or openssl is not on PATH")
    certs = make_certs(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"]),
         "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no",
         "--dir", str(tmp_path), "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs['ca']}&ssl_cert_reqs=required"
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)

        def up() -> bool:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                if "TLS" in out or "tls" in out:
                    pytest.skip(f"this redis-server build has no TLS: {out[-200:]}")
                raise RuntimeError(f"redis-server exited: {out[-500:]}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
        wait_until(up, 15, 0.05, what="the TLS redis-server")
        client.close()
        yield url
    finally:
        processes.stop_process(proc)


def test_worker_over_tls(tls_server: str) -> None:
    """A worker with a rediss:// URL predicts; a client without the CA is refused."""
    url = tls_server
    client: Any = redis.Redis.from_url(url, protocol=2)
    version = procs.publish_tiny_model(url)
    worker = procs.start_worker(url, "tls")
    try:
        procs.wait_serving(client, "tls", version)
        ids = [client.xadd(keys.VALUES, {"series": "t", "value": str(v)}) for v in range(5)]
        wait_until(lambda: client.xlen(keys.PREDICTIONS) == 3, 30, what="predictions over TLS")
        assert [f[b"source_id"] for _, f in client.xrange(keys.PREDICTIONS)] == ids[2:]
        assert processes.stop_process(worker) == 0
    finally:
        processes.stop_process(worker)
        client.close()
    no_ca = url.split("?", 1)[0]  # system CAs only: our private CA is not trusted
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(no_ca, socket_timeout=2).ping()
    plain = url.replace("rediss://", "redis://").split("?", 1)[0]
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        redis.Redis.from_url(plain, socket_timeout=2, socket_connect_timeout=2).ping()


# --- ACL -----------------------------------------------------------------------------------

def acl_lines() -> list[str]:
    """The `user ...` lines of the ```acl block of docs/redis-acl.md."""
    block = re.search(r"```acl\n(.*?)```", ACL_DOC.read_text(), re.S)
    assert block, "docs/redis-acl.md has no ```acl block"
    return [line for line in block.group(1).splitlines() if line.startswith("user ")]


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[tuple[RedisServer, dict[str, str]]]:
    """A redis-server loaded with the documented users (fresh passwords) plus an admin."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not on PATH")
    passwords = {role: "pw-" + secrets.token_hex(12) for role in ("worker", "producer", "trainer")}
    lines = ["user default on nopass ~* &* +@all"]
    for line in acl_lines():
        for role, pw in passwords.items():
            line = line.replace(f"<{role}-password>", pw)
        lines.append(line)
    aclfile = tmp_path / "users.acl"
    aclfile.write_text("\n".join(lines) + "\n")
    server = RedisServer(extra_args=["--aclfile", str(aclfile)]).start()
    try:
        yield server, passwords
    finally:
        server.cleanup()


def as_user(server: RedisServer, user: str, password: str) -> str:
    """The server's URL with ACL credentials."""
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def test_documented_acl_users(acl_server: tuple[RedisServer, dict[str, str]]) -> None:
    """The worker runs as forecast-worker without a single denial; the producer can only XADD."""
    server, pw = acl_server
    admin: Any = redis.Redis(port=server.port, protocol=2)
    trainer: Any = redis.Redis.from_url(as_user(server, "forecast-trainer", pw["trainer"]))
    blob, manifest = procs.tiny_model()
    version = registry.publish(trainer, blob, manifest)
    producer_url = as_user(server, "forecast-producer", pw["producer"])
    producer_client: Any = redis.Redis.from_url(producer_url)
    worker_url = as_user(server, "forecast-worker", pw["worker"])
    worker = procs.start_worker(worker_url, "acl", shards=2, log_level="DEBUG")
    try:
        procs.wait_serving(admin, "acl", version)
        producer = Producer(producer_client, shards=2)
        ids = producer.push_many([(f"a{i % 4}", float(i), None) for i in range(40)])
        wait_until(lambda: admin.xlen(keys.PREDICTIONS) == 40 - 8, 30,
                   what="predictions as ACL user")
        assert processes.stop_process(worker) == 0
        sources = {f[b"source_id"] for _, f in admin.xrange(keys.PREDICTIONS)}
        assert sources <= set(ids) and len(sources) == 32
        denials = [e for e in admin.acl_log() if e.get("username") != "forecast-producer"
                   and e.get("object") != "client|setinfo"]  # redis-py ignores that refusal
        assert not denials, f"the worker or trainer was refused: {denials}"
        log = worker.log()
        assert pw["worker"] not in log
        assert "forecast-worker:***@" in log

        # The producer: XADD to forecast:values* only.
        assert producer_client.xadd(keys.VALUES, {"series": "x", "value": "1"})
        assert producer_client.xadd("forecast:values:{3}", {"series": "x", "value": "1"})
        refused = [
            lambda: producer_client.xadd(keys.PREDICTIONS, {"series": "x", "prediction": "1"}),
            lambda: producer_client.xadd(keys.DEADLETTER, {"reason": "x"}),
            lambda: producer_client.xrange(keys.VALUES),
            lambda: producer_client.get(keys.MODEL_CURRENT),
            lambda: producer_client.set(keys.MODEL_CURRENT, "v666"),
            lambda: producer_client.delete(keys.VALUES),
            lambda: producer_client.xtrim(keys.VALUES, maxlen=0),
            lambda: producer_client.eval("return 1", 0),
            lambda: producer_client.flushall(),
            lambda: producer_client.keys("*"),
        ]
        for attempt in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
        assert admin.get(keys.MODEL_CURRENT) == version.encode()
        assert any(e.get("username") == "forecast-producer" for e in admin.acl_log())
    finally:
        processes.stop_process(worker)
        for c in (admin, trainer, producer_client):
            c.close()


def test_secrets_never_logged(acl_server: tuple[RedisServer, dict[str, str]]) -> None:
    """A wrong password exits 2 with a masked URL; `--check` too; the password never shows."""
    server, pw = acl_server
    wrong = "wrong-" + pw["worker"]
    runs = [(wrong, [], 2), (wrong, ["--check"], 1), (pw["worker"], ["--check"], 1)]
    for secret, extra, code in runs:
        url = as_user(server, "forecast-worker", secret)
        out = subprocess.run(
            [processes.PYTHON, "-m", "cli", "worker", "--redis-url", url, "--consumer",
             "nobody", "--metrics-port", "0", "--log-level", "DEBUG", *extra],
            capture_output=True, text=True, timeout=60, cwd=procs.LOG_DIR,
            env=processes.worker_env())
        text = out.stdout + out.stderr
        assert out.returncode == code, text[-500:]
        assert secret not in text and pw["worker"] not in text
        if not extra:
            assert "refused the credentials for redis://forecast-worker:***@" in text
        else:
            assert "unhealthy" in text  # no worker named `nobody` (or wrong credentials)
