"""The Kubernetes manifests under deploy/: valid against the Kubernetes schemas, wired as DESIGN says.

Everything is offline: the kustomizations are rendered here by following their
``resources``/``components`` and applying the few transformations deploy/ uses
(namespace, images, replicas, JSON 6902 patches); an unsupported kustomize feature
fails loudly instead of being ignored. When ``kubectl`` is installed, one test checks
this renderer against ``kubectl kustomize``.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from autopack_common.settings import DEFAULT_ADDRESSES, SERVICE_NAMES

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "base"
LOCAL = DEPLOY / "overlays" / "local"
TREES = {"base": BASE, "local": LOCAL}

# Oldest Kubernetes we support (native gRPC probes, autoscaling/v2 and policy/v1 are all GA
# there) and the newest schema kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
API_CLIENT_LABEL = "autopack.dev/api-client"
API = "<api-client>"  # marker for the CLI / ingress in the caller graph

# Who may call whom (DESIGN "The five services"): the orchestrator drives a phase, the builder
# re-budgets through the estimator, the CLI talks to the orchestrator and the estimator.
EXPECTED_CALLERS = {
    "orchestrator": {API},
    "estimator": {"orchestrator", "builder", API},
    "builder": {"orchestrator"},
    "applier": {"orchestrator"},
    "memory": {"orchestrator"},
}
SENSITIVE_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|DATABASE_URL|CREDENTIAL", re.IGNORECASE)
PLACEHOLDER = "CHANGE-ME"


# --------------------------------------------------------------------------- rendering


def _load_yaml_file(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    """name, tag, digest of an image reference (a registry port is not a tag)."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    name, tag = image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    return name, tag, digest


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Pod":
        return [obj["spec"]]
    if obj["kind"] in WORKLOAD_KINDS:
        return [obj["spec"]["template"]["spec"]]
    return []


def _json_pointer_apply(doc: Any, operation: dict[str, Any]) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].lstrip("/").split("/")]
    parent = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    op = operation["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, operation["value"])
        elif op == "replace":
            parent[index] = operation["value"]
        elif op == "remove":
            del parent[index]
        else:
            raise NotImplementedError(f"JSON patch op {op!r}")
        return
    if op in ("add", "replace"):
        if op == "replace" and last not in parent:
            raise KeyError(f"replace of missing path {operation['path']}")
        parent[last] = operation["value"]
    elif op == "remove":
        del parent[last]
    else:
        raise NotImplementedError(f"JSON patch op {op!r}")


def _matches_target(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "group": group,
        "version": version,
    }
    unsupported = set(target) - set(wanted)
    if unsupported:
        raise NotImplementedError(f"patch target fields {sorted(unsupported)}")
    return all(wanted[key] == value for key, value in target.items())


_KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "images",
    "replicas",
    "patches",
}


def render(directory: Path) -> list[dict[str, Any]]:
    """What ``kustomize build <directory>`` produces, for the features deploy/ uses."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unsupported = set(kustomization) - _KUSTOMIZATION_FIELDS
    if unsupported:
        raise NotImplementedError(
            f"{directory}: kustomization fields {sorted(unsupported)} are not understood by this renderer"
        )
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = directory / entry
        objects += render(target) if target.is_dir() else _load_yaml_file(target)
    for entry in kustomization.get("components", []):
        component = directory / entry
        spec = yaml.safe_load((component / "kustomization.yaml").read_text(encoding="utf-8"))
        if spec.get("kind") != "Component" or set(spec) - {"apiVersion", "kind", "resources"}:
            raise NotImplementedError(f"{component}: only Components that add resources are supported")
        objects += render(component)
    objects = copy.deepcopy(objects)

    if namespace := kustomization.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load(patch["patch"])
        if not isinstance(operations, list):
            raise NotImplementedError(f"{directory}: only JSON 6902 patches are supported")
        matched = [obj for obj in objects if _matches_target(obj, patch["target"])]
        if not matched:
            raise LookupError(f"{directory}: patch target {patch['target']} matches nothing")
        for obj in matched:
            for operation in operations:
                _json_pointer_apply(obj, operation)
    for image in kustomization.get("images", []):
        for obj in objects:
            for pod in _pod_specs(obj):
                for container in pod.get("initContainers", []) + pod["containers"]:
                    name, tag, digest = _split_image(container["image"])
                    if name != image["name"]:
                        continue
                    name = image.get("newName", name)
                    tag = image.get("newTag", tag)
                    digest = image.get("digest", digest)
                    container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    for replica in kustomization.get("replicas", []):
        for obj in objects:
            scalable = obj["kind"] in {"Deployment", "StatefulSet", "ReplicaSet"}
            if scalable and obj["metadata"]["name"] == replica["name"]:
                obj["spec"]["replicas"] = replica["count"]
    return objects


@functools.cache
def _rendered(tree: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(TREES[tree]))


def objects_of(tree: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(obj) for obj in _rendered(tree)]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def app_workload(objects: list[dict[str, Any]], service: str) -> dict[str, Any]:
    kind = "StatefulSet" if service == "applier" else "Deployment"
    return find(objects, kind, service)


def app_container(workload: dict[str, Any]) -> dict[str, Any]:
    name = workload["metadata"]["name"]
    containers = {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}
    assert name in containers, f"{name}: no container named like the service"
    return containers[name]


def all_containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (an empty selector selects everything)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def pods_selected(objects: list[dict[str, Any]], selector: dict[str, Any] | None) -> list[str]:
    return [
        w["metadata"]["name"]
        for w in workloads(objects)
        if selects(selector, w["spec"]["template"]["metadata"].get("labels", {}))
    ]


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


def effective_env(objects: list[dict[str, Any]], workload: dict[str, Any], container: dict[str, Any]) -> dict:
    """The environment the container starts with: envFrom, then env (which wins), with $(VAR) expanded."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = find(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
        else:
            data = secret_values(find(objects, "Secret", source["secretRef"]["name"]))
        env.update({prefix + k: str(v) for k, v in data.items()})
    template = workload["spec"]["template"]["metadata"]
    namespace = workload["metadata"].get("namespace", "default")
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                str(entry["value"]),
            )
            continue
        source = entry["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
            if label:
                env[entry["name"]] = template["labels"][label.group(1)]
            else:
                env[entry["name"]] = {
                    "metadata.name": f"{workload['metadata']['name']}-pod",
                    "metadata.namespace": namespace,
                }[path]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[entry["name"]] = find(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[entry["name"]] = secret_values(find(objects, "Secret", ref["name"]))[ref["key"]]
        else:
            env[entry["name"]] = f"<{next(iter(source))}>"
    return env


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a float (cpu in cores, memory in bytes)."""
    text = str(value)
    suffixes = {
        "m": 1e-3,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
    }
    for suffix, factor in sorted(suffixes.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@functools.cache
def proto_service_name(service: str) -> str:
    """Full name of the service's gRPC service, read from its proto (what the health service reports)."""
    text = (REPO / "protos" / "autopack" / service / "v1" / f"{service}.proto").read_text(encoding="utf-8")
    package = re.search(r"^package\s+([\w.]+)\s*;", text, re.MULTILINE)
    services = re.findall(r"^service\s+(\w+)\s*\{", text, re.MULTILINE)
    assert package and len(services) == 1, f"{service}.proto: expected one package and one service"
    return f"{package.group(1)}.{services[0]}"


def service_port(service: str) -> int:
    return int(DEFAULT_ADDRESSES[service].rsplit(":", 1)[1])


def _object_id(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


# --------------------------------------------------------------------------- the files


def test_every_yaml_file_under_deploy_is_part_of_a_kustomization() -> None:
    """An orphan manifest would never be applied (or validated): each file must be listed."""
    listed: set[Path] = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        listed.add(kustomization.resolve())
        spec = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
        for entry in spec.get("resources", []) + spec.get("components", []):
            target = (kustomization.parent / entry).resolve()
            assert target.exists(), f"{kustomization}: {entry} does not exist"
            listed.add(target)
    files = {p.resolve() for p in DEPLOY.rglob("*.y*ml")}
    assert files, "no manifests under deploy/"
    assert sorted(map(str, files - listed)) == []


def test_base_has_one_file_per_service_named_like_its_folder() -> None:
    for service in SERVICE_NAMES:
        path = BASE / f"{service}.yaml"
        assert path.is_file(), f"deploy/base/{service}.yaml is missing"
        kinds = {(d["kind"], d["metadata"]["name"]) for d in _load_yaml_file(path)}
        workload_kind = "StatefulSet" if service == "applier" else "Deployment"
        assert {("ServiceAccount", service), (workload_kind, service), ("Service", service)} <= kinds


@pytest.mark.parametrize("tree", sorted(TREES))
def test_rendered_objects_have_unique_names(tree: str) -> None:
    ids = [_object_id(o) for o in objects_of(tree)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("tree", sorted(TREES))
def test_every_object_validates_against_the_kubernetes_schema(tree: str, version: str) -> None:
    """Strict schemas: unknown fields (typos) fail too."""
    errors = []
    for obj in objects_of(tree):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            errors.append(f"{_object_id(obj)}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{_object_id(obj)}: {error.message}")
    assert errors == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
@pytest.mark.parametrize("tree", sorted(TREES))
def test_renderer_agrees_with_kubectl_kustomize(tree: str) -> None:
    """The offline renderer these tests rely on builds what kustomize builds."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(TREES[tree])], capture_output=True, text=True, timeout=60, check=True
    )
    expected = {_object_id(o): o for o in yaml.safe_load_all(result.stdout) if o}
    assert {_object_id(o): o for o in objects_of(tree)} == expected


# --------------------------------------------------------------------------- the services


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_service_probes_its_own_grpc_health_service(service: str) -> None:
    workload = app_workload(objects_of("base"), service)
    container = app_container(workload)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": service_port(service)}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {
            "port": service_port(service),
            "service": proto_service_name(service),
        }, f"{service} {probe}"


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_service_listens_on_all_interfaces_at_its_port(service: str) -> None:
    """A service binds AUTOPACK_<SVC>_ADDR; its own must be a wildcard, not the Service name."""
    objects = objects_of("base")
    workload = app_workload(objects, service)
    env = effective_env(objects, workload, app_container(workload))
    assert env[f"AUTOPACK_{service.upper()}_ADDR"] in {
        f"[::]:{service_port(service)}",
        f"0.0.0.0:{service_port(service)}",
    }
    for other in SERVICE_NAMES:
        if other != service:
            assert env[f"AUTOPACK_{other.upper()}_ADDR"] == f"{other}:{service_port(other)}"


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_service_exposes_a_port_named_grpc(service: str) -> None:
    objects = objects_of("base")
    svc = find(objects, "Service", service)
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("grpc", service_port(service))]
    assert svc["spec"]["ports"][0]["targetPort"] in ("grpc", service_port(service))
    assert pods_selected(objects, {"matchLabels": svc["spec"]["selector"]}) == [service]


def test_config_addresses_are_the_services() -> None:
    objects = objects_of("base")
    config = find(objects, "ConfigMap", "autopack-config")["data"]
    for service in SERVICE_NAMES:
        host, port = config[f"AUTOPACK_{service.upper()}_ADDR"].rsplit(":", 1)
        ports = [p["port"] for p in find(objects, "Service", host)["spec"]["ports"] if p["name"] == "grpc"]
        assert ports == [int(port)] == [service_port(service)]


def test_applier_is_a_statefulset_with_a_workspace_volume_per_replica() -> None:
    """DESIGN "Scaling": applier workspaces are pinned to a replica."""
    objects = objects_of("base")
    applier = find(objects, "StatefulSet", "applier")
    headless = find(objects, "Service", applier["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    claims = {t["metadata"]["name"] for t in applier["spec"]["volumeClaimTemplates"]}
    assert "workspaces" in claims
    env = effective_env(objects, applier, app_container(applier))
    mounts = {m["mountPath"]: m["name"] for m in app_container(applier)["volumeMounts"]}
    assert mounts[env["AUTOPACK_DATA_DIR"]] == "workspaces"


@pytest.mark.parametrize("service", ["estimator", "builder", "orchestrator", "memory"])
def test_stateless_services_keep_no_volume_state(service: str) -> None:
    """Their state is in PostgreSQL (or Qdrant): only emptyDirs, and DATABASE_URL from the Secret."""
    objects = objects_of("base")
    workload = app_workload(objects, service)
    assert workload["kind"] == "Deployment"
    for volume in workload["spec"]["template"]["spec"].get("volumes", []):
        assert set(volume) == {"name", "emptyDir"}, volume
    database = [e for e in app_container(workload)["env"] if e["name"] == "DATABASE_URL"]
    assert database and database[0]["valueFrom"]["secretKeyRef"]["name"] == "autopack-secrets"


def test_estimator_scales_on_cpu_between_two_and_ten() -> None:
    objects = objects_of("base")
    hpa = find(objects, "HorizontalPodAutoscaler", "estimator")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "estimator")
    find(objects, target["kind"], target["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert [(m["type"], m["resource"]["name"]) for m in hpa["spec"]["metrics"]] == [("Resource", "cpu")]
    # Utilization is relative to requests: the container must request CPU.
    assert "cpu" in app_container(find(objects, "Deployment", "estimator"))["resources"]["requests"]
    # The autoscaler owns the replica count; a fixed one would be reset on every apply.
    assert "replicas" not in find(objects, "Deployment", "estimator")["spec"]


def test_estimator_disruption_budget_covers_exactly_its_pods() -> None:
    objects = objects_of("base")
    pdb = find(objects, "PodDisruptionBudget", "estimator")
    assert pdb["spec"]["minAvailable"] == 1
    assert pods_selected(objects, pdb["spec"]["selector"]) == ["estimator"]
    strategy = find(objects, "Deployment", "estimator")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_estimator_settings_are_its_own() -> None:
    """Released on its own: its ConfigMap is used by the estimator and nothing else."""
    objects = objects_of("base")
    config = find(objects, "ConfigMap", "estimator-config")["data"]
    assert int(config["AUTOPACK_ESTIMATOR_MODEL_REFRESH_SECONDS"]) > 0
    users = [
        w["metadata"]["name"]
        for w in workloads(objects)
        for c in all_containers(w)
        for source in c.get("envFrom", [])
        if source.get("configMapRef", {}).get("name") == "estimator-config"
    ]
    assert users == ["estimator"]


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_telemetry_names_the_service_and_its_version(service: str) -> None:
    """service.name/version match what autopack_common.telemetry reports, so Jaeger shows one name."""
    objects = objects_of("base")
    workload = app_workload(objects, service)
    container = app_container(workload)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    env = effective_env(objects, workload, container)
    by_name = {e["name"]: e for e in container["env"]}
    component_ref = by_name["POD_COMPONENT"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert component_ref == "metadata.labels['app.kubernetes.io/component']"
    assert env["OTEL_SERVICE_NAME"] == f"autopack-{service}"
    attributes = dict(item.split("=", 1) for item in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    version = labels["app.kubernetes.io/version"]
    assert attributes["service.version"] == version
    assert _split_image(container["image"])[1] == version, "base image tag and version label differ"
    pyproject = REPO / "services" / service / "pyproject.toml"
    if pyproject.exists():
        declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
        assert version == declared, f"deploy says {version}, {pyproject} says {declared}"


def test_traces_and_vectors_go_to_the_in_cluster_backends() -> None:
    objects = objects_of("base")
    config = find(objects, "ConfigMap", "autopack-config")["data"]
    for key, service, port_name in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger", "otlp-grpc"),
        ("QDRANT_URL", "qdrant", "http"),
    ]:
        url = urlsplit(config[key])
        ports = {p["name"]: p["port"] for p in find(objects, "Service", url.hostname)["spec"]["ports"]}
        assert (url.hostname, url.port) == (service, ports[port_name]), key
    assert urlsplit(config["OTEL_EXPORTER_OTLP_ENDPOINT"]).port == 4317


# --------------------------------------------------------------------------- every workload


@pytest.mark.parametrize("tree", sorted(TREES))
def test_every_pod_is_hardened(tree: str) -> None:
    problems = []
    for workload in workloads(objects_of(tree)):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        pod_context = pod.get("securityContext", {})
        if pod_context.get("runAsNonRoot") is not True or not pod_context.get("runAsUser"):
            problems.append(f"{name}: pod must run as a non-root uid")
        if pod_context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: mounts a service account token it does not need")
        for container in all_containers(workload):
            context = container.get("securityContext", {})
            expected = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
            for key, value in expected.items():
                if context.get(key) is not value:
                    problems.append(f"{name}/{container['name']}: {key} must be {value}")
            if context.get("capabilities") != {"drop": ["ALL"]}:
                problems.append(f"{name}/{container['name']}: capabilities must be exactly drop ALL")
            if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
                problems.append(f"{name}/{container['name']}: runs as root")
    assert problems == []


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_app_pods_run_as_uid_1000_with_writable_dirs_on_volumes(service: str) -> None:
    """The root filesystem is read-only: /tmp, the data dir and the trace dir must be volumes."""
    objects = objects_of("base")
    workload = app_workload(objects, service)
    container = app_container(workload)
    assert workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 1000
    assert container["securityContext"]["runAsUser"] == 1000
    env = effective_env(objects, workload, container)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for path in ("/tmp", env["AUTOPACK_DATA_DIR"], env["AUTOPACK_TRACE_DIR"]):
        assert path in mounts, f"{service}: {path} is not a volume"
    assert env["XDG_CACHE_HOME"].startswith("/tmp/")


@pytest.mark.parametrize("tree", sorted(TREES))
def test_every_container_has_cpu_and_memory_requests_and_limits(tree: str) -> None:
    for workload in workloads(objects_of(tree)):
        for container in all_containers(workload):
            resources = container.get("resources", {})
            where = f"{workload['metadata']['name']}/{container['name']}"
            for resource in ("cpu", "memory"):
                request = parse_quantity(resources["requests"][resource])
                limit = parse_quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{where}: {resource} request {request} > limit {limit}"


@pytest.mark.parametrize("tree", sorted(TREES))
def test_termination_grace_outlasts_the_shutdown_grace(tree: str) -> None:
    """SIGTERM -> NOT_SERVING -> stop(grace): the kubelet must not SIGKILL before the grace ends."""
    objects = objects_of(tree)
    for service in SERVICE_NAMES:
        workload = app_workload(objects, service)
        grace = float(
            effective_env(objects, workload, app_container(workload))["AUTOPACK_SHUTDOWN_GRACE_SECONDS"]
        )
        assert workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace + 2, service


@pytest.mark.parametrize("tree", sorted(TREES))
def test_workloads_carry_the_recommended_labels(tree: str) -> None:
    for workload in workloads(objects_of(tree)):
        name = workload["metadata"]["name"]
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        for labels in (workload["metadata"]["labels"], template_labels):
            assert labels["app.kubernetes.io/name"] == name
            assert labels["app.kubernetes.io/part-of"] == "autopack"
            assert labels["app.kubernetes.io/component"]
            assert labels["app.kubernetes.io/version"]
        selector = workload["spec"]["selector"]
        assert selects(selector, template_labels), name
        # A version in a selector would orphan the pods on the next release.
        assert "app.kubernetes.io/version" not in selector.get("matchLabels", {}), name


@pytest.mark.parametrize("tree", sorted(TREES))
def test_every_service_selects_exactly_one_workload_and_its_ports(tree: str) -> None:
    objects = objects_of(tree)
    for service in (o for o in objects if o["kind"] == "Service"):
        selected = pods_selected(objects, {"matchLabels": service["spec"]["selector"]})
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {selected}"
        workload = next(w for w in workloads(objects) if w["metadata"]["name"] == selected[0])
        container_ports = {
            (p.get("name"), p["containerPort"]) for c in all_containers(workload) for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in pair for pair in container_ports), f"{service['metadata']['name']}: {target}"


@pytest.mark.parametrize("tree", sorted(TREES))
def test_every_reference_points_at_an_object_that_exists(tree: str) -> None:
    """configMapKeyRef, secretKeyRef, envFrom, volumes, service accounts: all must resolve (keys too)."""
    objects = objects_of(tree)
    data = {
        ("ConfigMap", o["metadata"]["name"]): set(o.get("data", {}))
        for o in objects
        if o["kind"] == "ConfigMap"
    }
    data.update(
        {("Secret", o["metadata"]["name"]): set(secret_values(o)) for o in objects if o["kind"] == "Secret"}
    )
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    problems = []
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        if pod.get("serviceAccountName", "default") not in accounts:
            problems.append(f"{name}: ServiceAccount {pod.get('serviceAccountName')} does not exist")
        refs: list[tuple[str, str, str | None]] = []
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"], None))
            if "secret" in volume:
                refs.append(("Secret", volume["secret"]["secretName"], None))
        for container in all_containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    refs.append(("ConfigMap", source["configMapRef"]["name"], None))
                if "secretRef" in source:
                    refs.append(("Secret", source["secretRef"]["name"], None))
            for entry in container.get("env", []):
                source = entry.get("valueFrom", {})
                if "configMapKeyRef" in source:
                    refs.append(
                        ("ConfigMap", source["configMapKeyRef"]["name"], source["configMapKeyRef"]["key"])
                    )
                if "secretKeyRef" in source:
                    refs.append(("Secret", source["secretKeyRef"]["name"], source["secretKeyRef"]["key"]))
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"] for v in pod.get("volumes", [])}
            volumes |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
            if mounts - volumes:
                problems.append(
                    f"{name}/{container['name']}: mounts undefined volumes {sorted(mounts - volumes)}"
                )
        for kind, ref_name, key in refs:
            if (kind, ref_name) not in data:
                problems.append(f"{name}: {kind} {ref_name} does not exist")
            elif key is not None and key not in data[(kind, ref_name)]:
                problems.append(f"{name}: {kind} {ref_name} has no key {key}")
    assert problems == []


@pytest.mark.parametrize("tree", sorted(TREES))
def test_every_image_is_pinned_to_a_tag(tree: str) -> None:
    for workload in workloads(objects_of(tree)):
        for container in all_containers(workload):
            _, tag, digest = _split_image(container["image"])
            assert digest or (tag and tag != "latest"), f"{container['image']} is not pinned"


# --------------------------------------------------------------------------- secrets


def test_no_plaintext_secrets_only_marked_placeholders() -> None:
    objects = objects_of("local")
    problems = []
    for obj in objects:
        name = _object_id(obj)
        if obj["kind"] == "Secret":
            if obj["metadata"].get("annotations", {}).get("autopack.dev/placeholder") != "true":
                problems.append(f"{name}: a committed Secret must be annotated autopack.dev/placeholder")
            for key, value in secret_values(obj).items():
                if value and PLACEHOLDER not in value:
                    problems.append(f"{name}: {key} holds a value that is not a {PLACEHOLDER} placeholder")
        if obj["kind"] == "ConfigMap":
            for key, value in obj.get("data", {}).items():
                if SENSITIVE_NAME.search(key) or re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)):
                    problems.append(f"{name}: {key} looks like a credential; it belongs in a Secret")
        for workload in [obj] if obj["kind"] in WORKLOAD_KINDS else []:
            for container in all_containers(workload):
                for entry in container.get("env", []):
                    if SENSITIVE_NAME.search(entry["name"]) and "value" in entry:
                        problems.append(f"{name}: env {entry['name']} is a literal; use a secretKeyRef")
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            for pattern in (
                r"sk-ant-[\w-]{8,}",
                r"\bsk-[A-Za-z0-9]{20,}",
                r"AKIA[0-9A-Z]{16}",
                r"BEGIN [A-Z ]*PRIVATE",
            ):
                if re.search(pattern, text):
                    problems.append(f"{path.relative_to(REPO)}: contains something like a real credential")
    assert problems == []


def test_database_password_placeholders_agree() -> None:
    """The local cluster must start: PostgreSQL's password is the one in DATABASE_URL."""
    values = secret_values(find(objects_of("base"), "Secret", "autopack-secrets"))
    url = urlsplit(values["DATABASE_URL"])
    assert url.scheme == "postgresql+psycopg"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.password == values["POSTGRES_PASSWORD"]
    postgres = find(objects_of("base"), "StatefulSet", "postgres")
    env = effective_env(objects_of("base"), postgres, postgres["spec"]["template"]["spec"]["containers"][0])
    assert (url.username, url.path.lstrip("/")) == (env["POSTGRES_USER"], env["POSTGRES_DB"])


# --------------------------------------------------------------------------- network policies


def _policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def _admitted(objects: list[dict[str, Any]], policy: dict[str, Any]) -> dict[int, set[str]]:
    """port -> callers a policy admits (workload names, or API for the CLI/ingress peers)."""
    admitted: dict[int, set[str]] = {}
    for rule in policy["spec"].get("ingress", []):
        callers: set[str] = set()
        for peer in rule.get("from", []):
            if "ipBlock" in peer:
                callers.add(f"ipBlock {peer['ipBlock']['cidr']}")
                continue
            pod_selector = peer.get("podSelector", {})
            if API_CLIENT_LABEL in (pod_selector.get("matchLabels") or {}) or API_CLIENT_LABEL in (
                (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
            ):
                callers.add(API)
                continue
            assert "namespaceSelector" not in peer, f"{policy['metadata']['name']}: unexpected namespace peer"
            selected = pods_selected(objects, pod_selector)
            assert selected, f"{policy['metadata']['name']}: peer {pod_selector} selects no pod"
            callers.update(selected)
        for port in rule.get("ports", []):
            admitted.setdefault(port["port"], set()).update(callers)
    return admitted


def test_network_policies_deny_by_default() -> None:
    deny = find(objects_of("local"), "NetworkPolicy", "deny-all")
    assert deny["spec"]["podSelector"] == {}
    assert deny["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny["spec"]


def test_every_network_policy_selects_existing_pods() -> None:
    objects = objects_of("local")
    for policy in _policies(objects):
        if policy["metadata"]["name"] != "deny-all":
            assert pods_selected(objects, policy["spec"]["podSelector"]), policy["metadata"]["name"]


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_service_admits_only_its_known_callers(service: str) -> None:
    objects = objects_of("local")
    admitted: dict[int, set[str]] = {}
    for policy in _policies(objects):
        if service in pods_selected(objects, policy["spec"]["podSelector"]) and policy["spec"].get("ingress"):
            for port, callers in _admitted(objects, policy).items():
                admitted.setdefault(port, set()).update(callers)
    assert admitted == {service_port(service): EXPECTED_CALLERS[service]}


def test_backing_services_admit_the_services_that_use_them() -> None:
    objects = objects_of("local")

    def callers_of(workload: str, port: int) -> set[str]:
        found: set[str] = set()
        for policy in _policies(objects):
            if workload in pods_selected(objects, policy["spec"]["podSelector"]):
                found |= _admitted(objects, policy).get(port, set())
        return found

    assert callers_of("postgres", 5432) == set(SERVICE_NAMES)
    assert callers_of("jaeger", 4317) == set(SERVICE_NAMES)
    assert callers_of("jaeger", 16686) == {API}
    assert callers_of("qdrant", 6333) == {"memory"}


def test_every_exposed_port_is_admitted_by_some_policy() -> None:
    """With deny-all on, a Service port nobody admits is dead."""
    objects = objects_of("local")
    for service in (o for o in objects if o["kind"] == "Service"):
        (workload,) = pods_selected(objects, {"matchLabels": service["spec"]["selector"]})
        if workload == "jaeger":
            continue  # checked port by port above; 4318 (OTLP/HTTP) has the same callers as 4317
        admitted: set[int] = set()
        for policy in _policies(objects):
            if workload in pods_selected(objects, policy["spec"]["podSelector"]):
                admitted |= set(_admitted(objects, policy))
        for port in service["spec"]["ports"]:
            assert port["port"] in admitted, f"{workload}: port {port['port']} is unreachable"


# --------------------------------------------------------------------------- the local overlay


def test_local_overlay_only_retags_and_downsizes() -> None:
    base = {_object_id(o): o for o in objects_of("base")}
    local = objects_of("local")
    kustomization = yaml.safe_load((LOCAL / "kustomization.yaml").read_text(encoding="utf-8"))
    namespace = kustomization["namespace"]
    find(local, "Namespace", namespace)
    for obj in local:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, _object_id(obj)
    # Every images:/replicas: entry must hit something: kustomize ignores a typo silently.
    base_images = {
        _split_image(c["image"])[0] for w in workloads(list(base.values())) for c in all_containers(w)
    }
    assert {i["name"] for i in kustomization["images"]} == {f"autopack-{s}" for s in SERVICE_NAMES}
    assert {i["name"] for i in kustomization["images"]} <= base_images
    assert {r["name"] for r in kustomization["replicas"]} == set(SERVICE_NAMES)
    for service in SERVICE_NAMES:
        workload = app_workload(local, service)
        assert workload["spec"]["replicas"] == 1
        assert app_container(workload)["image"] == f"autopack-{service}:dev"
    hpa = find(local, "HorizontalPodAutoscaler", "estimator")
    assert hpa["spec"]["minReplicas"] == 1 <= hpa["spec"]["maxReplicas"]
    network_policies = {o["metadata"]["name"] for o in _policies(local)}
    assert {"deny-all", *SERVICE_NAMES} <= network_policies


def test_readme_documents_build_apply_and_estimator_release() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "kubectl apply -k deploy/overlays/local" in readme
    for service in SERVICE_NAMES:
        assert f"-f services/{service}/Dockerfile ." in readme, service
    assert re.search(r"kubectl (-n \S+ )?set image deployment/estimator estimator=", readme)
    for path in re.findall(r"\bdeploy/[\w./-]+[\w/]", readme):
        assert (REPO / path).exists(), f"README mentions {path}, which does not exist"
