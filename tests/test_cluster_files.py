"""Every cluster definition is checked: the launcher YAML against Ray's own schema, the KubeRay
manifests against the structure KubeRay requires, and the resources the jobs ask for against
the node types that should run them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import ray
import yaml

from crashchat.config import (
    LocalClusterConfig,
    PipelineConfig,
    PreprocessConfig,
    ServeConfig,
    TrainConfig,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "cluster" / "kuberay"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _start_resources(group: dict[str, Any]) -> dict[str, float]:
    """Custom resources a KubeRay group declares (rayStartParams.resources is quoted JSON)."""
    raw = group.get("rayStartParams", {}).get("resources")
    if not raw:
        return {}
    return dict(json.loads(json.loads(raw)))


def test_aws_launcher_config_passes_rays_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = _yaml(REPO / "cluster" / "aws.yaml")
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert "cpu_decode" in types["cpu_decode"]["resources"]
    assert "gpu_node" in types["gpu"]["resources"]
    for t in types.values():
        assert t.get("min_workers", 0) <= t.get("max_workers", 0)
    # The dashboard / Jobs API binds to loopback on the head; token auth on every node.
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd and "RAY_AUTH_MODE=token" in head_cmd
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["worker_start_ray_commands"] if "start" in c)
    assert cfg["provider"]["security_group"]["IpPermissions"] == []


def _check_cluster_spec(spec: dict[str, Any], where: str) -> dict[str, dict[str, float]]:
    """The structure KubeRay requires of a RayCluster spec; returns resources per group."""
    assert spec["rayVersion"] == ray.__version__, where
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: dashboard exposed"
    assert head["template"]["spec"]["containers"][0]["image"], where
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: no token auth"
    groups = {"head": _start_resources(head)}
    for g in spec["workerGroupSpecs"]:
        assert {"groupName", "replicas", "minReplicas", "maxReplicas", "template"} <= set(g), where
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}: {g['groupName']}"
        container = g["template"]["spec"]["containers"][0]
        res = container["resources"]
        assert res["requests"] == res["limits"], f"{where}: {g['groupName']} requests != limits"
        groups[g["groupName"]] = _start_resources(g) | {
            k: float(v) for k, v in res["limits"].items() if k == "nvidia.com/gpu"
        }
    return groups


def test_kuberay_manifests_have_the_structure_kuberay_requires() -> None:
    cluster = _yaml(KUBERAY / "raycluster.yaml")
    job = _yaml(KUBERAY / "rayjob.yaml")
    service = _yaml(KUBERAY / "rayservice.yaml")
    for doc, kind in ((cluster, "RayCluster"), (job, "RayJob"), (service, "RayService")):
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    specs = {
        "raycluster": cluster["spec"],
        "rayjob": job["spec"]["rayClusterSpec"],
        "rayservice": service["spec"]["rayClusterConfig"],
    }
    for name, spec in specs.items():
        groups = _check_cluster_spec(spec, name)
        # Same node groups everywhere: CPU decode nodes and GPU nodes.
        assert "cpu_decode" in groups["cpu-decode"], name
        assert "gpu_node" in groups["gpu"] and groups["gpu"]["nvidia.com/gpu"] >= 1, name
    # The RayJob runs the pipeline job with a config that validates.
    entry = job["spec"]["entrypoint"].split()
    assert entry[:2] == ["python", "jobs/pipeline.py"]
    config = entry[entry.index("--config") + 1]
    load_config(REPO / config, PipelineConfig)
    # GCS fault tolerance with the external Redis of redis.yaml.
    ft = service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    redis = list(yaml.safe_load_all((KUBERAY / "redis.yaml").read_text()))
    redis_service = next(d for d in redis if d["kind"] == "Service")
    host, port = ft["redisAddress"].split(":")
    assert host == redis_service["metadata"]["name"]
    assert int(port) == redis_service["spec"]["ports"][0]["port"]
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "crashchat-redis"


def test_rayservice_embeds_a_serve_config_our_model_accepts() -> None:
    from ray.serve.schema import ServeDeploySchema

    service = _yaml(KUBERAY / "rayservice.yaml")
    serve_cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_cfg)
    app = serve_cfg["applications"][0]
    assert app["import_path"] == "crashchat.serving.builder:build_app"
    cfg = ServeConfig.model_validate(app["args"]["config"])
    assert app["args"]["registry"]
    # Bound beyond loopback, so the token must reach every container from a Secret.
    assert cfg.host == "0.0.0.0"
    spec = service["spec"]["rayClusterConfig"]
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]
    ]
    for c in containers:
        names = {e["name"]: e for e in c.get("env", [])}
        assert "secretKeyRef" in names[cfg.token_env]["valueFrom"], c["name"]
    # The resources the Serve deployments ask for exist in the node groups.
    groups = _check_cluster_spec(spec, "rayservice")
    offered = {k for g in groups.values() for k in g}
    assert set(cfg.model.resources) <= offered
    assert set(cfg.decoder.resources) <= offered
    assert cfg.model.num_gpus >= 1


def test_job_resources_exist_where_they_should_run() -> None:
    aws = _yaml(REPO / "cluster" / "aws.yaml")["available_node_types"]
    local = load_config(REPO / "cluster" / "local" / "cluster.yaml", LocalClusterConfig)
    local_offered = {k for n in [local.head, *local.workers] for k in n.resources}
    pre = load_config(REPO / "jobs" / "configs" / "preprocess.yaml", PreprocessConfig)
    train = load_config(REPO / "jobs" / "configs" / "videollama3-7b.yaml", TrainConfig)
    gpu_serve = load_config(REPO / "serve" / "videollama3-7b.yaml", ServeConfig)
    assert pre.placement.resource in aws["cpu_decode"]["resources"]
    assert pre.placement.resource in local_offered
    assert set(train.scaling.worker_resources) <= set(aws["gpu"]["resources"])
    assert set(train.scaling.worker_resources) <= local_offered
    assert set(gpu_serve.model.resources) <= set(aws["gpu"]["resources"])
    assert set(gpu_serve.decoder.resources) <= set(aws["cpu_decode"]["resources"])
    # The local cluster binds its dashboard / Jobs API to loopback.
    assert local.dashboard_host == "127.0.0.1"


def test_dockerfile_builds_from_the_repo() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "FROM ${BASE_IMAGE}" in text and "nvidia/cuda" in text
    assert "-c requirements/lock.txt" in text  # the pinned set, as make setup installs
    for path in ("platform/", "jobs/", "serve/", "cluster/", "requirements/"):
        assert f"COPY {path}" in text
        assert (REPO / path).exists()
    assert "USER ray" in text
