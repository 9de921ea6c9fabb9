"""deploy/ against the engines' own schemas, and against the code and cog.yaml it must agree with.

Kubernetes manifests: kubernetes-validate (Kubernetes' OpenAPI schemas, strict: no unknown
field). Compose: the Compose specification's schema, as check-jsonschema vendors it. The drain
itself (preStop included) runs against the real server in tests/test_shutdown.py.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from musicgen_cog.api.concurrency import CONCURRENCY_ENV, DEFAULT_CONCURRENCY
from musicgen_cog.commands.health import CHECKS
from musicgen_cog.serving.drain import CUT_WAIT_SECONDS, DEFAULT_DRAIN_SECONDS, DRAIN_ENV
from musicgen_cog.serving.load_gauge import METRICS_FILE_ENV
from musicgen_cog.serving.shutdown import SETTLE_SECONDS
from tests.cog_server import VENV_BIN
from tests.conftest import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose.yaml"
KUBERNETES_VERSION = "1.37.0"  # the newest kubernetes-validate 1.37.0 ships
MANIFESTS = ["deployment.yaml", "service.yaml", "hpa.yaml"]
SERVE = ["python", "-m", "musicgen_cog.commands.serve"]
PRESTOP_SETTLE = 5.0  # commands/drain.py's default


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def cog_yaml() -> dict:
    return load(ROOT / "cog.yaml")


def container(deployment: dict, name: str = "musicgen") -> dict:
    """A container of the Deployment's pods by name: the server, or its metrics sidecar."""
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def compose_is_valid(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", MANIFESTS)
def test_each_kubernetes_manifest_passes_kubernetes_own_schema(name):
    kubernetes_validate.validate(load(KUBERNETES / name), KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_check_rejects_a_misspelt_field():
    broken = copy.deepcopy(load(KUBERNETES / "deployment.yaml"))
    server = container(broken)
    server["livenesProbe"] = server.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_compose_file_passes_the_compose_specification():
    done = compose_is_valid(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_check_rejects_a_misspelt_field(tmp_path):
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periode:"))
    assert compose_is_valid(broken).returncode != 0


def test_slots_agree_everywhere_and_the_autoscaler_targets_cog_yamls_default_target():
    concurrency = cog_yaml()["concurrency"]
    assert concurrency["max"] == DEFAULT_CONCURRENCY
    assert 0 < concurrency["default_target"] < concurrency["max"]
    deployment = container(load(KUBERNETES / "deployment.yaml"))
    assert env_of(deployment)[CONCURRENCY_ENV] == str(DEFAULT_CONCURRENCY)
    assert deployment["resources"]["limits"]["nvidia.com/gpu"] == 1  # the slots share one GPU
    for service in load(COMPOSE)["services"].values():
        assert service["environment"][CONCURRENCY_ENV] == str(DEFAULT_CONCURRENCY)
        assert len(service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]) == 1
    (metric,) = load(KUBERNETES / "hpa.yaml")["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "musicgen_predictions_in_flight"
    assert float(metric["pods"]["target"]["averageValue"]) == concurrency["default_target"]
    adapter = load(KUBERNETES / "prometheus-adapter-values.yaml")["rules"]["custom"][0]
    assert adapter["name"]["as"] == "musicgen_predictions_in_flight"


def test_the_image_has_the_c_compiler_triton_builds_its_kernel_launcher_with():
    """Without one the row-wise attention cannot launch, and every GPU boot steps down a rung."""
    assert "gcc" in cog_yaml()["build"]["system_packages"]


def test_every_server_drains_on_sigterm_within_the_time_it_is_given():
    deployment = load(KUBERNETES / "deployment.yaml")
    server = container(deployment)
    assert server["args"] == SERVE and "command" not in server  # tini, the entry point, stays
    env = env_of(server)
    assert float(env[DRAIN_ENV]) == DEFAULT_DRAIN_SECONDS
    drain_ends = float(env[DRAIN_ENV]) + CUT_WAIT_SECONDS + SETTLE_SECONDS
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > PRESTOP_SETTLE + drain_ends
    assert server["lifecycle"]["preStop"]["exec"]["command"] == ["python", "-m", "musicgen_cog.commands.drain"]
    for service in load(COMPOSE)["services"].values():
        assert service["command"] == SERVE
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert grace > float(service["environment"][DRAIN_ENV]) + CUT_WAIT_SECONDS + SETTLE_SECONDS


def test_the_probes_ask_the_health_command_what_each_should():
    server = container(load(KUBERNETES / "deployment.yaml"))
    commands = {
        probe: server[probe]["exec"]["command"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert commands == {
        "startupProbe": ["python", "-m", "musicgen_cog.commands.health", "started"],
        "readinessProbe": ["python", "-m", "musicgen_cog.commands.health", "ready"],
        "livenessProbe": ["python", "-m", "musicgen_cog.commands.health", "alive"],
    }
    assert all(command[-1] in CHECKS for command in commands.values())
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # setup may download COG_WEIGHTS
    for service in load(COMPOSE)["services"].values():
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "musicgen_cog.commands.health", "ready"]


def test_the_gauge_file_is_written_where_the_metrics_sidecar_reads():
    deployment = load(KUBERNETES / "deployment.yaml")
    server, sidecar = container(deployment), container(deployment, "metrics")
    folder = str(Path(env_of(server)[METRICS_FILE_ENV]).parent)
    assert f"--collector.textfile.directory={folder}" in sidecar["args"]
    assert server["volumeMounts"] == [{"name": "metrics", "mountPath": folder}]
    assert sidecar["volumeMounts"] == [{"name": "metrics", "mountPath": folder, "readOnly": True}]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(sidecar["ports"][0]["containerPort"])
