"""What the deployment tests share: the commands and environments the images and compose.yaml
run, and nginx and Prometheus run from the very files in deploy/ on free loopback ports, as
plain child processes.

No Docker engine exists where the tests run, so the tests read the Dockerfile (`dockerfile.py`)
and compose.yaml, and run what the containers would run (the same entrypoint and command, the
same environment variables) directly. nginx and Prometheus are Debian's binaries
(`.ci/install-system-deps`).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.dockerfile import parse_dockerfile

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY_DIR / "compose.yaml"
NGINX_TEMPLATE = DEPLOY_DIR / "nginx" / "lamini.conf.template"
NGINX_RENDER_SCRIPT = DEPLOY_DIR / "nginx" / "render-config.sh"
PROMETHEUS_CONFIG = DEPLOY_DIR / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY_DIR / "grafana" / "dashboards" / "lamini-serve.json"
REPLICA_JOB = "lamini"


def require_binary(name: str) -> str:
    """Path of a system binary the deployment tests need; a clear failure when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise AssertionError(f"{name} is not installed; run .ci/install-system-deps")
    return path


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check` until it is true; fail with `what` when it never becomes true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def answers_at_all(url: str) -> bool:
    """The server at `url` answers HTTP, whatever the status (it is up, maybe not healthy)."""
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def answers_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# --- child processes -------------------------------------------------------------------------


@dataclass
class Child:
    """A process the tests started, with its output in a log file for failure messages."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_child(
    name: str, command: list[str], log: Path, env: Mapping[str, str] | None = None
) -> Child:
    handle = log.open("wb")
    process = subprocess.Popen(
        command, stdout=handle, stderr=subprocess.STDOUT, env=dict(env or os.environ)
    )
    handle.close()
    return Child(name, process, log)


@contextmanager
def running(child: Child, ready: Callable[[], bool], timeout_s: float) -> Iterator[Child]:
    """Wait for `child` to be ready, yield it, always stop it."""
    try:
        wait_until(lambda: ready() or child.process.poll() is not None, timeout_s, f"{child.name}")
        if child.process.poll() is not None:
            raise AssertionError(f"{child.name} exited early:\n{child.output()}")
        yield child
    finally:
        child.stop()


# --- nginx -----------------------------------------------------------------------------------


def render_nginx_include(upstreams: list[str], lb_port: int, output: Path) -> Path:
    """deploy/nginx/lamini.conf.template rendered by deploy's own script, as compose does."""
    env = {
        **os.environ,
        "LAMINI_UPSTREAMS": " ".join(upstreams),
        "LAMINI_LB_PORT": str(lb_port),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["sh", str(NGINX_RENDER_SCRIPT), str(NGINX_TEMPLATE), str(output)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return output


def write_nginx_main_config(prefix: Path, include: Path) -> Path:
    """The part of nginx.conf the nginx image provides: an `http {}` around our include, with
    every path nginx writes kept inside `prefix` so it runs unprivileged on any port."""
    for directory in ("logs", "temp"):
        (prefix / directory).mkdir(parents=True, exist_ok=True)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {prefix}/temp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would run as `nobody`, who cannot enter pytest's private temp
    # directories; the image's nginx user owns its directories instead.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    config = prefix / "nginx.conf"
    config.write_text(
        f"""{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {prefix}/logs/access.log;
{temp_paths}
    include {include};
}}
"""
    )
    return config


def nginx_command(prefix: Path, config: Path, *extra: str) -> list[str]:
    return [
        require_binary("nginx"),
        "-p",
        str(prefix),
        "-c",
        str(config),
        "-e",
        str(prefix / "logs" / "error.log"),
        "-g",
        "daemon off;",
        *extra,
    ]


def check_nginx_config(prefix: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        nginx_command(prefix, config, "-t"), capture_output=True, text=True, check=False
    )


# --- Prometheus ------------------------------------------------------------------------------


def prometheus_config_for(targets: list[str], self_address: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the replica job's DNS discovery (compose service
    names) replaced by static loopback targets, and 1 s intervals so a test sees results fast.
    Everything else (paths, timeouts, rule files, job names) is the deployed file's."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [
        str(PROMETHEUS_CONFIG.parent / pattern) for pattern in config.get("rule_files", [])
    ]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    replica_job = jobs[REPLICA_JOB]
    assert "dns_sd_configs" in replica_job, "the replica job should discover replicas by DNS"
    del replica_job["dns_sd_configs"]
    replica_job["static_configs"] = [{"targets": targets}]
    replica_job["scrape_timeout"] = "1s"
    jobs["prometheus"]["static_configs"] = [{"targets": [self_address]}]
    return config


class PrometheusAPI:
    """The few HTTP API calls the tests make."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        assert body.get("status") == "success", f"query {expr!r} failed: {body}"
        return body["data"]["result"]

    def targets(self, job: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base_url}/api/v1/targets", timeout=5)
        active = response.json()["data"]["activeTargets"]
        return [target for target in active if target["labels"].get("job") == job]


# --- the commands the images run -------------------------------------------------------------

_COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's `${NAME}` / `${NAME:-default}` substitution."""
    return _COMPOSE_VARIABLE.sub(
        lambda match: variables.get(match.group(1)) or (match.group(2) or ""), text
    )


def image_command(
    stage: str, command: list[str] | None = None, bin_dir: Path = Path(sys.executable).parent
) -> list[str]:
    """What a container of `stage` runs: ENTRYPOINT + (the compose `command` or CMD), with the
    entrypoint resolved to the console script in `bin_dir` (default: this interpreter's)."""
    dockerfile = parse_dockerfile()
    entrypoint = dockerfile.stage(stage).last("ENTRYPOINT").exec_form()
    arguments = command if command is not None else dockerfile.stage(stage).last("CMD").exec_form()
    executable = bin_dir / entrypoint[0]
    assert executable.exists(), f"{entrypoint[0]} is not installed in {bin_dir}"
    return [str(executable), *entrypoint[1:], *arguments]


def compose_service_command(
    service: str, variables: Mapping[str, str], bin_dir: Path = Path(sys.executable).parent
) -> list[str]:
    """The command compose runs for `service` (its image's entrypoint + its `command`)."""
    spec = load_compose()["services"][service]
    command = [interpolate(word, variables) for word in spec["command"]]
    return image_command(spec["build"]["target"], command, bin_dir)


def compose_environment(
    service: str, variables: Mapping[str, str], overrides: Mapping[str, str]
) -> dict[str, str]:
    """The environment a container of `service` gets (its image's ENV, then compose's), on top
    of this process's, less what only makes sense inside the container (the /data volume, the
    image's virtualenv), and with `overrides` (addresses, ports, directories) last."""
    spec = load_compose()["services"][service]
    image_env = parse_dockerfile().env(spec["build"]["target"])
    compose_env = {
        name: interpolate(str(value), variables) for name, value in spec["environment"].items()
    }
    inside_only = ("/data", "/opt/lamini")
    outside = {
        name: value
        for name, value in {**image_env, **compose_env}.items()
        if not any(path in value for path in inside_only)
    }
    return {**os.environ, **outside, **overrides}


def convert_like_compose(model: str, store_dir: Path) -> None:
    """The compose `convert` one-off, run in this environment: `model` into `store_dir`."""
    variables = {"LAMINI_MODEL": model}
    command = compose_service_command("convert", variables)
    env = compose_environment("convert", variables, {"LAMINI_STORE_DIR": str(store_dir)})
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


def replica_process(
    model: str, store_dir: Path, port: int, bin_dir: Path = Path(sys.executable).parent
) -> tuple[list[str], dict[str, str]]:
    """Command and environment of one compose replica serving `model` on a loopback `port`."""
    variables = {"LAMINI_MODEL": model}
    command = compose_service_command("lamini", variables, bin_dir)
    overrides = {
        "LAMINI_STORE_DIR": str(store_dir),
        "LAMINI_HOST": "127.0.0.1",
        "LAMINI_PORT": str(port),
    }
    return command, compose_environment("lamini", variables, overrides)
