#!/usr/bin/env python3
"""Checks the jobctl Helm chart and the Dockerfile, offline.

For each scenario of values (the defaults, every optional feature on, the
same "secured" with authentication, TLS, Redis TLS and OpenTelemetry, TLS
alone, the embedded store, ...):

1. `helm lint --strict` with those values (Helm's own library, through
   helm-python-sdk; it also validates the values against values.schema.json);
2. `helm template`: the chart rendered offline by the same library;
3. every rendered object against the Kubernetes OpenAPI schemas of the
   oldest and newest Kubernetes the scenario claims, with unknown fields
   refused (kubernetes-validate, strict);
4. every Pod (Deployment templates and the test Pod) against the rules of
   the "restricted" Pod Security Standard;
5. what the chart promises: the grace period outlasts the server's drain,
   the Redis URL comes from a Secret, selectors match, the worker dials the
   Service, every object carries the standard labels; every file variable
   (JOBCTL_API_KEYS_FILE, JOBCTL_TLS_CERT, ...) names a file a read-only
   Secret or ConfigMap mount provides; with TLS, readiness is /readyz and the
   test Pod and workers dial with TLS; traces may leave through the
   NetworkPolicy.

Scenarios that must be refused (a template guard or the schema) are
rendered too, and must fail. The values table of the chart's README must
list every value. The Dockerfile is parsed with BuildKit's parser and
checked for a multi-stage build ending as a numeric non-root user. With
--server-bin, the real jobctl-server runs with the environment the chart
renders, against a private redis-server, and its /healthz and /readyz must
behave as the probes assume: once with the default values, once with the
secured scenario's (files replaced by test files made with openssl,
redis-server TLS-only with client certificates and an ACL user, the gRPC
port checked to handshake TLS).

Run through scripts/helm-check.sh, which installs the Python packages.
Runs every check, then exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import dockerfile
import helm_python as helm
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE / "jobctl"
REPO = HERE.parent.parent

RELEASE = "demo"
NAMESPACE = "jobs"
# The chart needs gRPC probes (GA in 1.27); sleep preStop hooks need 1.30.
OLDEST_KUBE = "1.27.0"
NEWEST_KUBE = kubernetes_validate.latest_version()

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)

# What the restricted Pod Security Standard allows.
ALLOWED_VOLUME_KINDS = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
ALLOWED_ADDED_CAPABILITIES = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}

ALL_FEATURES: dict[str, Any] = {
    "replicaCount": 3,
    "image": {"digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": [{"name": "registry"}],
    "redis": {"url": "redis://:secret@redis-master.data.svc:6379/0", "keyPrefix": "prod"},
    "server": {"logFormat": "text", "logLevel": "info,jobctl_server=debug"},
    "extraEnv": [{"name": "JOBCTL_MAX_PAYLOAD_BYTES", "value": "4194304"}],
    "extraEnvFrom": [{"configMapRef": {"name": "jobctl-limits"}}],
    "terminationGracePeriodSeconds": 40,
    "preStopSleepSeconds": 5,
    "probes": {"readiness": {"type": "http"}},
    "service": {"annotations": {"example.com/owner": "platform"}},
    "serviceAccount": {"annotations": {"example.com/role": "jobctl"}},
    "podAnnotations": {"example.com/scrape": "true"},
    "podLabels": {"team": "platform"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "jobs", "operator": "Exists", "effect": "NoSchedule"}],
    "priorityClassName": "high",
    "autoscaling": {
        "enabled": True,
        "minReplicas": 3,
        "maxReplicas": 12,
        "targetMemoryUtilizationPercentage": 80,
    },
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": "34%"},
    "networkPolicy": {
        "enabled": True,
        "grpcFrom": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}],
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "redis": {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [6379, 26379]},
        "extraEgress": [
            {"to": [{"podSelector": {"matchLabels": {"app": "otel-collector"}}}],
             "ports": [{"port": 4317, "protocol": "TCP"}]}
        ],
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "worker": {
        "enabled": True,
        "image": {"repository": "registry.example.com/acme/thumbnailer", "tag": "1.4.2"},
        "args": ["--queues", "default,media"],
        "replicaCount": 4,
        "env": [{"name": "WORKER_CONCURRENCY", "value": "8"}],
        "envFrom": [{"secretRef": {"name": "thumbnailer"}}],
        "ports": [{"name": "metrics", "containerPort": 8080}],
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
        "probes": {"livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}}},
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 50,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": "jobctl_jobs",
                            "selector": {"matchLabels": {"queue": "media", "state": "queued"}},
                        },
                        "target": {"type": "AverageValue", "averageValue": "10"},
                    },
                }
            ],
        },
        "podDisruptionBudget": {"enabled": True},
    },
}

# Authentication, TLS (gRPC and Redis) and OpenTelemetry export, on top of
# every other feature: the "secured" scenario, and the second real-server run.
SECURITY: dict[str, Any] = {
    "redis": {
        "tls": {"ca": {"existingConfigMap": "redis-ca"}, "clientCertSecret": "jobctl-redis-client"},
    },
    "auth": {
        "methods": ["api-key", "jwt", "mtls"],
        "apiKeys": {"existingSecret": "jobctl-api-keys"},
        "jwt": {
            "hs256Secret": {"existingSecret": "jobctl-jwt"},
            "audience": "jobctl",
            "issuer": "https://idp.example.com",
            "leeway": "1m",
        },
        "mtls": {"namespaceFrom": "san", "defaultRoles": ["worker"]},
    },
    "tls": {"enabled": True, "existingSecret": "jobctl-tls", "clientCA": {"existingSecret": "jobctl-client-ca"}},
    "otel": {
        "enabled": True,
        "endpoint": "http://otel-collector.observability.svc:4317",
        "sampler": "parentbased_traceidratio",
        "samplerArg": "0.25",
        "resourceAttributes": "deployment.environment=prod",
        "extraEnv": [
            {"name": "OTEL_EXPORTER_OTLP_HEADERS",
             "valueFrom": {"secretKeyRef": {"name": "otel-headers", "key": "headers"}}}
        ],
    },
    "networkPolicy": {
        "otel": {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]},
    },
    "worker": {
        "tokenSecret": {"name": "thumbnailer-token"},
        "caCert": {"existingSecret": "jobctl-tls"},
        "otelServiceName": "thumbnailer",
    },
    "tests": {"tls": {"ca": {"existingSecret": "jobctl-tls"}, "clientCertSecret": "jobctl-test-client"}},
}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """base with extra merged in, as Helm merges values (maps deeply, the rest replaced)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


SECURED = merged(ALL_FEATURES, SECURITY)

# name -> (values, oldest Kubernetes the rendering must be valid on, kinds expected)
SCENARIOS: dict[str, tuple[dict[str, Any], str, set[str]]] = {
    "defaults": (
        {},
        OLDEST_KUBE,
        {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Pod"},
    ),
    "all-features": (
        ALL_FEATURES,
        "1.30.0",
        {
            "Deployment",
            "Service",
            "ServiceAccount",
            "Secret",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceMonitor",
            "Pod",
        },
    ),
    "secured": (
        SECURED,
        "1.30.0",
        {
            "Deployment",
            "Service",
            "ServiceAccount",
            "Secret",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceMonitor",
            "Pod",
        },
    ),
    "tls-only": (
        {"tls": {"enabled": True, "existingSecret": "jobctl-tls"}},
        OLDEST_KUBE,
        {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Pod"},
    ),
    "single-replica": (
        {"replicaCount": 1, "serviceAccount": {"create": False}},
        OLDEST_KUBE,
        {"Deployment", "Service", "Pod"},
    ),
    "embedded-store": (
        {"replicaCount": 1, "redis": {"embedded": True, "existingSecret": ""}},
        OLDEST_KUBE,
        {"Deployment", "Service", "ServiceAccount", "Pod"},
    ),
    "redis-cluster-with-wait": (
        {
            "redis": {
                "url": "redis+cluster://:secret@redis-0.redis:6379,redis-1.redis:6379",
                "waitReplicas": 1,
                "waitTimeout": "500ms",
            }
        },
        OLDEST_KUBE,
        {"Deployment", "Service", "ServiceAccount", "Secret", "PodDisruptionBudget", "Pod"},
    ),
    "redis-sentinel": (
        {"redis": {"url": "redis+sentinel://:secret@redis.data.svc:26379/mymaster"}},
        OLDEST_KUBE,
        {"Deployment", "Service", "ServiceAccount", "Secret", "PodDisruptionBudget", "Pod"},
    ),
}

# name -> (values, a fragment the error must contain)
MUST_FAIL: dict[str, tuple[dict[str, Any], str]] = {
    "grace period shorter than the drain": (
        {"terminationGracePeriodSeconds": 20},
        "must exceed server.shutdownGraceSeconds",
    ),
    "grace period eaten by the preStop sleep": (
        {"preStopSleepSeconds": 15},
        "must exceed server.shutdownGraceSeconds",
    ),
    "no Redis configured": (
        {"redis": {"existingSecret": "", "url": ""}},
        "set redis.existingSecret",
    ),
    "embedded store with two replicas": (
        {"redis": {"embedded": True}},
        "needs replicaCount 1",
    ),
    "worker without an image": ({"worker": {"enabled": True}}, "worker.image.repository"),
    "mtls without a client CA": (
        {"auth": {"methods": ["mtls"]}, "tls": {"enabled": True, "existingSecret": "jobctl-tls"}},
        "set tls.enabled and tls.clientCA",
    ),
    "client CA without TLS": (
        {"tls": {"clientCA": {"existingSecret": "jobctl-client-ca"}}},
        "tls.clientCA needs tls.enabled",
    ),
    "TLS without a certificate": ({"tls": {"enabled": True}}, "tls.enabled needs tls.existingSecret"),
    "api-key without a keys file": ({"auth": {"methods": ["api-key"]}}, "auth.apiKeys.existingSecret"),
    "JWT without an audience": (
        {"auth": {"jwt": {"jwks": {"existingConfigMap": "jwks"}, "issuer": "https://idp"}}},
        "auth.jwt.audience and auth.jwt.issuer",
    ),
    "JWT without a key": (
        {"auth": {"methods": ["jwt"], "jwt": {"audience": "a", "issuer": "i"}}},
        "set a key",
    ),
    "auth none with other methods": ({"auth": {"methods": ["none", "jwt"]}}, "none cannot be combined"),
    "OpenTelemetry without an endpoint": ({"otel": {"enabled": True}}, "otel.enabled needs otel.endpoint"),
    "schema: unknown auth method": ({"auth": {"methods": ["oauth"]}}, "methods"),
    "schema: OTLP endpoint without scheme": (
        {"otel": {"enabled": True, "endpoint": "collector:4317"}},
        "endpoint",
    ),
    "schema: replicaCount not a number": ({"replicaCount": "two"}, "replicaCount"),
    "schema: unknown top-level key": ({"replicas": 3}, "replicas"),
    "schema: bad readiness probe type": (
        {"probes": {"readiness": {"type": "tcp"}}},
        "type",
    ),
    "schema: Redis URL without scheme": ({"redis": {"url": "redis-master:6379"}}, "url"),
    "schema: unknown Redis URL scheme": ({"redis": {"url": "redis+shard://a:1"}}, "url"),
    "schema: negative waitReplicas": ({"redis": {"waitReplicas": -1}}, "waitReplicas"),
}


class Failure(Exception):
    pass


def lint(values: dict[str, Any]) -> list[str]:
    """`helm lint --strict`: every finding of severity warning or above."""
    report = helm.lint(
        str(CHART),
        values or None,
        strict=True,
        namespace=NAMESPACE,
        kube_version="v" + NEWEST_KUBE,
    )
    problems = [
        f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m["severity"] >= 2
    ]
    problems += list(report.get("errors") or [])
    return problems


def render(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values or None)
        return chart.render(values or None, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(manifests: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise Failure(f"{path}: a document is not a mapping")
            yield path, doc


def where(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate_schemas(objs: list[dict[str, Any]], oldest: str) -> int:
    """Validates against the Kubernetes schemas; returns how many objects were checked."""
    checked = 0
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            check_service_monitor(obj)
            continue
        for version in (oldest, NEWEST_KUBE):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                raise Failure(f"{where(obj)} is invalid on Kubernetes {version} at {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                raise Failure(f"{where(obj)}: {e.message}")
        checked += 1
    return checked


def check_service_monitor(obj: dict[str, Any]) -> None:
    # No OpenAPI schema ships for the Prometheus Operator's CRDs; check the
    # fields it needs by hand.
    spec = obj.get("spec", {})
    if not spec.get("selector", {}).get("matchLabels"):
        raise Failure(f"{where(obj)}: no selector")
    for endpoint in spec.get("endpoints", []):
        if endpoint.get("port") != "http" or endpoint.get("path") != "/metrics":
            raise Failure(f"{where(obj)}: endpoint {endpoint} does not scrape http /metrics")


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod metadata, pod spec) of every Pod the chart makes."""
    for obj in objs:
        if obj["kind"] == "Pod":
            yield where(obj), obj["metadata"], obj["spec"]
        elif obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            template = obj["spec"]["template"]
            yield where(obj), template.get("metadata", {}), template["spec"]


def check_restricted(name: str, spec: dict[str, Any]) -> None:
    """The restricted Pod Security Standard (and a read-only root filesystem)."""
    problems = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field} is true")
    if spec.get("hostUsers") is False:
        pass  # user namespaces are fine
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUME_KINDS:
            problems.append(f"volume {volume['name']} is of a forbidden kind {sorted(kinds)}")
    pod_sc = spec.get("securityContext", {})
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"unsafe sysctl {sysctl['name']}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("the Pod runs as user 0")
    containers = (
        spec.get("containers", []) + spec.get("initContainers", []) + spec.get("ephemeralContainers", [])
    )
    if not spec.get("containers"):
        problems.append("no containers")
    for c in containers:
        sc = c.get("securityContext", {})
        cname = f"container {c['name']}"
        if sc.get("privileged"):
            problems.append(f"{cname} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cname} does not set allowPrivilegeEscalation: false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{cname} does not drop ALL capabilities")
        extra = set(caps.get("add", [])) - ALLOWED_ADDED_CAPABILITIES
        if extra:
            problems.append(f"{cname} adds capabilities {sorted(extra)}")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{cname} may run as root (runAsNonRoot is not true)")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{cname} runs as user 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{cname} has seccomp profile {seccomp!r}, not RuntimeDefault")
        apparmor = sc.get("appArmorProfile", pod_sc.get("appArmorProfile", {})).get("type")
        if apparmor == "Unconfined":
            problems.append(f"{cname} runs AppArmor-unconfined")
        selinux = sc.get("seLinuxOptions", pod_sc.get("seLinuxOptions", {}))
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            problems.append(f"{cname} sets forbidden SELinux options {selinux}")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{cname} sets procMount {sc['procMount']}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cname} has a writable root filesystem")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{cname} uses hostPort {port['hostPort']}")
    if problems:
        raise Failure(f"{name} breaks the restricted Pod Security Standard: " + "; ".join(problems))


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def seconds(duration: str) -> int:
    m = re.fullmatch(r"(\d+)s", duration)
    if not m:
        raise Failure(f"JOBCTL_SHUTDOWN_GRACE {duration!r} is not whole seconds")
    return int(m.group(1))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_chart_promises(objs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
        labels = obj["metadata"].get("labels", {})
        missing = [label for label in STANDARD_LABELS if label not in labels]
        if missing:
            raise Failure(f"{where(obj)} lacks the labels {missing}")
        if obj["metadata"].get("namespace") != NAMESPACE:
            raise Failure(f"{where(obj)} is not in the release namespace")

    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind["Deployment"]}
    server = deployments["server"]
    pod = server["spec"]["template"]
    if not selects(server["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]):
        raise Failure("the server Deployment's selector does not match its Pods")
    container = pod["spec"]["containers"][0]
    env = env_of(container)

    # The grace period outlasts the server's drain (and the preStop sleep).
    grace = seconds(env["JOBCTL_SHUTDOWN_GRACE"]["value"])
    sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    period = pod["spec"]["terminationGracePeriodSeconds"]
    if period <= grace + sleep:
        raise Failure(f"terminationGracePeriodSeconds {period} <= shutdown grace {grace}s + preStop {sleep}s")

    # The Redis URL comes from a Secret, never a plain value.
    redis = env.get("JOBCTL_REDIS_URL")
    if values.get("redis", {}).get("embedded"):
        if redis is not None or server["spec"]["strategy"]["type"] != "Recreate":
            raise Failure("the embedded store must run without a Redis URL, one Pod at a time")
    else:
        if redis is None or "secretKeyRef" not in redis.get("valueFrom", {}):
            raise Failure("JOBCTL_REDIS_URL does not come from a Secret")
        ref = redis["valueFrom"]["secretKeyRef"]
        secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
        if values.get("redis", {}).get("url") and ref["key"] not in secrets.get(ref["name"], {}).get("data", {}):
            raise Failure(f"JOBCTL_REDIS_URL points at {ref}, which the chart does not create")

    # Ports and probes line up.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports != {"grpc": 50051, "http": 9090}:
        raise Failure(f"the server's ports are {ports}")
    listen = env["JOBCTL_LISTEN"]["value"].rsplit(":", 1)[1]
    http_listen = env["JOBCTL_HTTP_LISTEN"]["value"].rsplit(":", 1)[1]
    if (int(listen), int(http_listen)) != (ports["grpc"], ports["http"]):
        raise Failure("JOBCTL_LISTEN / JOBCTL_HTTP_LISTEN do not match the container ports")
    readiness = container["readinessProbe"]
    if "grpc" in readiness:
        if readiness["grpc"]["port"] != ports["grpc"]:
            raise Failure("the gRPC readiness probe is not on the gRPC port")
    elif readiness.get("httpGet", {}).get("path") != "/readyz":
        raise Failure("the readiness probe is neither gRPC health nor /readyz")
    if container["livenessProbe"].get("httpGet", {}).get("path") != "/healthz":
        raise Failure("the liveness probe is not /healthz (it must not depend on Redis)")

    # The Service reaches the server Pods.
    services = by_kind["Service"]
    service = services[0]
    if not selects(service["spec"]["selector"], pod["metadata"]["labels"]):
        raise Failure("the Service does not select the server Pods")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    if set(service_ports) != {"grpc", "http"}:
        raise Failure(f"the Service's ports are {sorted(service_ports)}")
    grpc_address = (
        f"{service['metadata']['name']}.{NAMESPACE}.svc:{service_ports['grpc']['port']}"
    )
    tls = bool(values.get("tls", {}).get("enabled"))

    # Autoscalers, budgets and policies point at what exists.
    names = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] != "Deployment" or target["name"] not in names:
            raise Failure(f"{where(hpa)} scales {target}, which does not exist")
        if "replicas" in names[target["name"]]["spec"]:
            raise Failure(f"{target['name']} sets replicas although an HPA scales it")
    for budget in by_kind.get("PodDisruptionBudget", []):
        selector = budget["spec"]["selector"]["matchLabels"]
        if not any(selects(selector, d["spec"]["template"]["metadata"]["labels"]) for d in names.values()):
            raise Failure(f"{where(budget)} selects no Pods")
    for policy in by_kind.get("NetworkPolicy", []):
        if not selects(policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"]):
            raise Failure(f"{where(policy)} does not select the server Pods")
        egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
        wanted = {53, *values.get("networkPolicy", {}).get("redis", {}).get("ports", [6379])}
        if not wanted <= egress_ports:
            raise Failure(f"{where(policy)} lets out {sorted(egress_ports)}, not DNS and Redis {sorted(wanted)}")
        ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}
        if ingress_ports != {"grpc", "http"}:
            raise Failure(f"{where(policy)} lets in {sorted(ingress_ports)}")

    # The worker dials the Service.
    worker = deployments.get("worker")
    if worker is not None:
        wenv = env_of(worker["spec"]["template"]["spec"]["containers"][0])
        scheme = "https" if tls else "http"
        if wenv.get("JOBCTL_SERVER", {}).get("value") != f"{scheme}://{grpc_address}":
            raise Failure(f"the worker's JOBCTL_SERVER is {wenv.get('JOBCTL_SERVER')}, not {scheme}://{grpc_address}")
        if worker["spec"]["selector"]["matchLabels"] == server["spec"]["selector"]["matchLabels"]:
            raise Failure("the worker and server Deployments share a selector")
    elif values.get("worker", {}).get("enabled"):
        raise Failure("worker.enabled rendered no worker Deployment")

    # `helm test` asks the Service's gRPC health.
    tests = [p for p in by_kind.get("Pod", []) if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    if len(tests) != 1:
        raise Failure(f"expected one helm test Pod, found {len(tests)}")
    for c in tests[0]["spec"]["containers"]:
        args = c.get("args", [])
        if f"-addr={grpc_address}" not in args:
            raise Failure(f"the test Pod's {c['name']} does not dial {grpc_address}")
        if ("-tls" in args) != tls:
            raise Failure(f"the test Pod's {c['name']} dials with -tls={'-tls' in args}, the server's TLS is {tls}")
        if tls and not ("-tls-no-verify" in args or any(a.startswith("-tls-ca-cert=") for a in args)):
            raise Failure(f"the test Pod's {c['name']} neither verifies the server with a CA nor says -tls-no-verify")

    check_security(server, deployments.get("worker"), tests[0], by_kind, values)


def mounted_files(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """path -> "Secret name/key" or "ConfigMap name/key" of every file the
    container's read-only Secret and ConfigMap mounts provide."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:
            raise Failure(f"container {container['name']} mounts {mount['name']}, which is no volume of its Pod")
        source = volume.get("secret") or volume.get("configMap")
        if source is None:
            continue
        if not mount.get("readOnly"):
            raise Failure(f"container {container['name']} mounts {mount['name']} writable")
        kind = "Secret " + source["secretName"] if "secret" in volume else "ConfigMap " + source["name"]
        for item in source.get("items", []):
            files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = f"{kind}/{item['key']}"
    return files


def check_security(
    server: dict[str, Any],
    worker: dict[str, Any] | None,
    test: dict[str, Any],
    by_kind: dict[str, list[dict[str, Any]]],
    values: dict[str, Any],
) -> None:
    """Authentication, TLS and OpenTelemetry settings reach the Pods as the
    server's flags expect: each file variable names a file a read-only mount
    provides, credentials come from Secrets, readiness works with TLS."""
    spec = server["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = env_of(container)
    files = mounted_files(spec, container)
    for name, var in env.items():
        value = var.get("value", "")
        if value.startswith("/etc/jobctl/") and value not in files:
            raise Failure(f"{name}={value}, a file no volume of the server provides")
        if name in ("JOBCTL_TOKEN", "JOBCTL_REDIS_URL") and "value" in var:
            raise Failure(f"{name} is a plain value, not a Secret")
    tls = values.get("tls", {}).get("enabled", False)
    if tls != ("JOBCTL_TLS_CERT" in env and "JOBCTL_TLS_KEY" in env):
        raise Failure(f"tls.enabled is {tls}, yet JOBCTL_TLS_CERT/KEY are {'JOBCTL_TLS_CERT' in env}")
    if tls:
        if "grpc" in container["readinessProbe"]:
            raise Failure("TLS is on, yet readiness is a (plaintext) gRPC probe")
        if tls_cert := files.get(env["JOBCTL_TLS_CERT"]["value"]):
            if not tls_cert.startswith("Secret "):
                raise Failure(f"the server certificate comes from {tls_cert}, not a Secret")
        grpc_port = next(p for p in by_kind["Service"][0]["spec"]["ports"] if p["name"] == "grpc")
        if grpc_port.get("appProtocol") == "kubernetes.io/h2c":
            raise Failure("TLS is on, yet the Service says the gRPC port is cleartext (h2c)")
    for var in ("JOBCTL_API_KEYS_FILE", "JOBCTL_JWT_HS256_SECRET_FILE", "JOBCTL_TLS_KEY", "JOBCTL_REDIS_CLIENT_KEY"):
        if var in env and not files[env[var]["value"]].startswith("Secret "):
            raise Failure(f"{var} comes from {files[env[var]['value']]}, not a Secret")
    methods = values.get("auth", {}).get("methods", [])
    if methods and env.get("JOBCTL_AUTH", {}).get("value") != ",".join(methods):
        raise Failure(f"JOBCTL_AUTH is {env.get('JOBCTL_AUTH')}, auth.methods {methods}")
    if not methods and "JOBCTL_AUTH" in env:
        raise Failure("JOBCTL_AUTH is set although auth.methods is empty")

    otel = values.get("otel", {})
    endpoint = otel.get("endpoint") if otel.get("enabled") else None
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value") != endpoint:
        raise Failure(f"OTEL_EXPORTER_OTLP_ENDPOINT is {env.get('OTEL_EXPORTER_OTLP_ENDPOINT')}, not {endpoint}")
    if endpoint:
        url = urllib.parse.urlsplit(endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        for policy in by_kind.get("NetworkPolicy", []):
            egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
            if port not in egress_ports:
                raise Failure(f"{where(policy)} does not let traces out to the collector port {port}")

    if worker is not None:
        wspec = worker["spec"]["template"]["spec"]
        wcontainer = wspec["containers"][0]
        wenv = env_of(wcontainer)
        wfiles = mounted_files(wspec, wcontainer)
        for name, var in wenv.items():
            value = var.get("value", "")
            if value.startswith("/etc/jobctl/") and value not in wfiles:
                raise Failure(f"the worker's {name}={value}, a file no volume of the worker provides")
        token = values.get("worker", {}).get("tokenSecret", {}).get("name")
        if token and wenv.get("JOBCTL_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name") != token:
            raise Failure(f"the worker's JOBCTL_TOKEN does not come from Secret {token}")
        if wenv.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value") != endpoint:
            raise Failure("the worker does not export traces where the server does")

    for c in test["spec"]["containers"]:
        tfiles = mounted_files(test["spec"], c)
        for arg in c.get("args", []):
            flag, _, value = arg.partition("=")
            if flag in ("-tls-ca-cert", "-tls-client-cert", "-tls-client-key") and value not in tfiles:
                raise Failure(f"the test Pod's {c['name']} passes {arg}, a file none of its volumes provides")


def run_scenario(name: str, values: dict[str, Any], oldest: str, kinds: set[str], show: bool) -> str:
    problems = lint(values)
    if problems:
        raise Failure("helm lint --strict: " + "; ".join(problems))
    manifests = render(values)
    notes = manifests.get("jobctl/templates/NOTES.txt", "")
    if RELEASE not in notes:
        raise Failure("NOTES.txt did not render")
    found = list(objects(manifests))
    objs = [obj for _, obj in found]
    if show:
        print(yaml.safe_dump_all(objs, sort_keys=False))
    rendered_kinds = {obj["kind"] for obj in objs}
    if rendered_kinds != kinds:
        raise Failure(f"rendered kinds {sorted(rendered_kinds)}, expected {sorted(kinds)}")
    checked = validate_schemas(objs, oldest)
    pods = 0
    for pod_name, _meta, spec in pod_specs(objs):
        check_restricted(pod_name, spec)
        pods += 1
    check_chart_promises(objs, values)
    return (
        f"lint clean, {len(objs)} objects ({', '.join(sorted(rendered_kinds))}), "
        f"{checked} valid on Kubernetes {oldest[:-2]} and {NEWEST_KUBE[:-2]}, "
        f"{pods} Pod specs restricted"
    )


def run_must_fail(values: dict[str, Any], fragment: str) -> str:
    try:
        render(values)
    except helm.HelmError as e:
        message = str(e)
        if fragment not in message:
            raise Failure(f"refused, but not for the expected reason ({fragment!r}): {message}")
        # (helm lint renders `fail` as a log line, by design, so only the
        # rendering is expected to refuse.)
        return "refused: " + message.strip().splitlines()[-1][:150]
    raise Failure("rendered, but must be refused")


# Values documented as one row although they hold objects.
OPAQUE_VALUES = {
    "resources",
    "podSecurityContext",
    "securityContext",
    "affinity",
    "networkPolicy.dns.to",
    "worker.resources",
    "worker.podSecurityContext",
    "worker.securityContext",
    "worker.affinity",
    "worker.probes",
}


def value_keys(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = prefix + key
        if isinstance(value, dict) and value and path not in OPAQUE_VALUES:
            yield from value_keys(value, path + ".")
        else:
            yield path


def check_values_documented() -> str:
    """Every value has a row in the chart README's table, and every row a value."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = set(value_keys(values))
    rows = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", (CHART / "README.md").read_text(), re.M))
    undocumented = sorted(keys - rows)
    stale = sorted(rows - keys)
    if undocumented or stale:
        raise Failure(f"README.md values table: undocumented {undocumented}, not in values.yaml {stale}")
    return f"all {len(keys)} values have a row in README.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(what: str, probe: Callable[[], bool], deadline: float = 60.0) -> None:
    """Polls probe() until it is true; the deadline only stops a hang."""
    end = time.monotonic() + deadline
    while not probe():
        if time.monotonic() > end:
            raise Failure(f"gave up waiting for {what}")
        time.sleep(0.05)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A CA and a leaf certificate for 127.0.0.1 and localhost (server and
    client use), with openssl; written to d as ca.crt, leaf.crt, leaf.key."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
            "-days", "2", "-subj", "/CN=helm-check-ca")
    openssl("req", *ec, "-keyout", str(d / "leaf.key"), "-out", str(d / "leaf.csr"), "-subj", "/CN=localhost")
    (d / "leaf.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl("x509", "-req", "-in", str(d / "leaf.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "2", "-out", str(d / "leaf.crt"), "-extfile", str(d / "leaf.ext"))


def test_file(d: Path, path: str) -> Path:
    """The stand-in for a file the chart mounts at path (/etc/jobctl/<volume>/<key>)."""
    volume, key = path.removeprefix("/etc/jobctl/").split("/", 1)
    if key in ("tls.crt", "tls.key") and volume in ("tls", "redis-client-cert"):
        return d / ("leaf.crt" if key == "tls.crt" else "leaf.key")
    if volume in ("tls-client-ca", "redis-ca"):
        return d / "ca.crt"
    if volume == "api-keys":
        (d / "api-keys").write_text("helm-check-api-key-0123456789abcdef  default  client,worker,operator  check\n")
        return d / "api-keys"
    if volume == "jwt-hs256-secret":
        (d / "hs256").write_text(os.urandom(32).hex())
        return d / "hs256"
    raise Failure(f"check_server has no test file for {path}")


def tls_alpn(port: int, ca: Path) -> str | None:
    """Handshakes with the gRPC port as a TLS client verifying against ca;
    returns the negotiated ALPN protocol."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            return conn.selected_alpn_protocol()


def check_server(binary: Path, values: dict[str, Any]) -> str:
    """Runs the real jobctl-server with the environment the chart renders
    for values, against a private redis-server on a free port, and checks
    what the probes rely on: /healthz and /readyz answer 200; with Redis
    gone, /readyz answers 503 while /healthz stays 200; SIGTERM ends it in
    time.

    With files mounted (auth, TLS, Redis TLS) each is replaced by a test
    file (a CA and a certificate made with openssl, an API key, an HS256
    secret) and redis-server runs TLS-only, requiring client certificates
    and an ACL user. With tls.enabled the gRPC port must then handshake TLS
    (h2) with that CA. OTEL_EXPORTER_OTLP_ENDPOINT is pointed at a closed
    local port: export fails in the background and must not matter."""
    if not binary.is_file():
        raise Failure(f"{binary} is missing (cargo build --workspace --bins first)")
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    known = set(re.findall(r"JOBCTL_[A-Z0-9_]+", help_text))
    objs = [obj for _, obj in objects(render(values))]
    server = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "server")
    container = server["spec"]["template"]["spec"]["containers"][0]
    chart_env = env_of(container)
    unknown = sorted(name for name in chart_env if name.startswith("JOBCTL_") and name not in known)
    if unknown:
        raise Failure(f"the chart sets {unknown}, which jobctl-server --help does not list")

    grpc_port, http_port, redis_port = free_port(), free_port(), free_port()
    env = {name: e["value"] for name, e in chart_env.items() if "value" in e}
    base = f"http://127.0.0.1:{http_port}"
    tls = "JOBCTL_TLS_CERT" in env
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = sorted(name for name, value in env.items() if value.startswith("/etc/jobctl/"))
        redis_tls = "JOBCTL_REDIS_CA_CERT" in env or "JOBCTL_REDIS_CLIENT_CERT" in env
        if files:
            make_pki(d)
            for name in files:
                env[name] = str(test_file(d, env[name]))
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
        redis_cmd = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--dir", tmp]
        if redis_tls:
            redis_cmd += [
                "--port", "0", "--tls-port", str(redis_port),
                "--tls-cert-file", str(d / "leaf.crt"), "--tls-key-file", str(d / "leaf.key"),
                "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "yes",
                "--user", "default", "off",
                "--user", "jobctl", "on", ">helm-check-password", "~*", "&*", "+@all",
            ]
            redis_url = f"rediss://jobctl:helm-check-password@127.0.0.1:{redis_port}/0"
        else:
            redis_cmd += ["--port", str(redis_port)]
            redis_url = f"redis://127.0.0.1:{redis_port}"
        env.update(
            PATH=os.environ.get("PATH", "/usr/bin:/bin"),
            # In the cluster these come from the Secret and the Pod's own ports.
            JOBCTL_REDIS_URL=redis_url,
            JOBCTL_LISTEN=f"127.0.0.1:{grpc_port}",
            JOBCTL_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        )
        redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
        server_proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            poll("/readyz to answer 200", lambda: server_proc.poll() is not None or http_status(base + "/readyz") == 200)
            if server_proc.poll() is not None:
                raise Failure(f"jobctl-server exited {server_proc.returncode}: {server_proc.stderr.read()[-600:]}")
            if http_status(base + "/healthz") != 200:
                raise Failure("/healthz does not answer 200")
            alpn = None
            if tls:
                alpn = tls_alpn(grpc_port, d / "ca.crt")
                if alpn != "h2":
                    raise Failure(f"the TLS gRPC port negotiated ALPN {alpn!r}, not h2")
            redis.terminate()
            redis.wait(timeout=30)
            poll("/readyz to answer 503 without Redis", lambda: http_status(base + "/readyz") == 503)
            if http_status(base + "/healthz") != 200:
                raise Failure("/healthz fails while Redis is down: liveness would restart every Pod")
            started = time.monotonic()
            server_proc.terminate()
            grace = seconds(env["JOBCTL_SHUTDOWN_GRACE"])
            try:
                code = server_proc.wait(timeout=server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
            except subprocess.TimeoutExpired:
                raise Failure("jobctl-server outlived terminationGracePeriodSeconds after SIGTERM")
            took = time.monotonic() - started
            if code != 0:
                raise Failure(f"jobctl-server exited {code} on SIGTERM")
            log = server_proc.stderr.read()
            logs = [line for line in log.splitlines() if line.strip()]
            if env.get("JOBCTL_LOG_FORMAT") == "json" and not all(line.startswith("{") for line in logs):
                raise Failure("JOBCTL_LOG_FORMAT=json, yet some log lines are not JSON")
            if "JOBCTL_AUTH" in env and "authentication is on" not in log:
                raise Failure("JOBCTL_AUTH is set, yet the server did not say authentication is on")
            if "OTEL_EXPORTER_OTLP_ENDPOINT" in env and "exporting traces" not in log:
                raise Failure("OTEL_EXPORTER_OTLP_ENDPOINT is set, yet the server did not say it exports traces")
        finally:
            server_proc.kill()
            redis.kill()
            server_proc.wait()
            redis.wait()
    extras = []
    if files:
        extras.append(f"{len(files)} mounted files stood in by test files")
    if redis_tls:
        extras.append("Redis over TLS with a client certificate and an ACL user")
    if tls:
        extras.append(f"gRPC TLS handshake ok (ALPN {alpn})")
    if "JOBCTL_AUTH" in env:
        extras.append(f"authentication on ({env['JOBCTL_AUTH']})")
    if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
        extras.append("OTLP export on")
    return (
        f"{len(chart_env)} env vars accepted; "
        + "".join(e + "; " for e in extras)
        + f"/healthz 200, /readyz 200 then 503 without Redis "
        f"(/healthz still 200); SIGTERM exit 0 ({took:.1f}s, grace {grace}s)"
    )


def check_dockerfile() -> str:
    commands = dockerfile.parse_file(str(REPO / "Dockerfile"))
    stages: list[list[dockerfile.Command]] = []
    for cmd in commands:
        if cmd.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(cmd)
    if len(stages) < 2:
        raise Failure("Dockerfile: not a multi-stage build")
    build = " ".join(" ".join(c.value) for s in stages[:-1] for c in s if c.cmd == "RUN")
    for needed in ("cargo build --release --locked", "-p jobctl-server --bin jobctl-server"):
        if needed not in build:
            raise Failure(f"Dockerfile: the build stage does not run {needed!r}")
    final = stages[-1]
    base = final[0].value[0]
    if base.startswith("rust:"):
        raise Failure("Dockerfile: the final image is the build image")
    users = [c.value[0] for c in final if c.cmd == "USER"]
    if not users or not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        raise Failure(f"Dockerfile: the final stage's USER is {users[-1:] or 'unset'}, not a numeric non-root id")
    entry = [c for c in final if c.cmd == "ENTRYPOINT"]
    if not entry or not entry[-1].json or not entry[-1].value[0].endswith("/jobctl-server"):
        raise Failure("Dockerfile: the entrypoint is not jobctl-server (exec form)")
    ignored = (REPO / ".dockerignore").read_text().split()
    if "target/" not in ignored or ".git/" not in ignored:
        raise Failure(".dockerignore: target/ and .git/ must stay out of the build context")
    return f"{len(stages)} stages, runs on {base} as USER {users[-1]}"


def main() -> int:
    # Helm logs each template `fail` it meets while linting; keep that out.
    logging.basicConfig(level=logging.ERROR)
    helm.enable_logging(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--show", metavar="SCENARIO", help="print the rendered manifests of a scenario")
    parser.add_argument(
        "--server-bin",
        type=Path,
        metavar="PATH",
        help="also run this jobctl-server with the chart's environment against a private redis-server",
    )
    args = parser.parse_args()

    print(f"helm {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
          f"kubernetes-validate schemas up to {NEWEST_KUBE}")
    failed = []

    def step(label: str, fn: Callable[[], str]) -> None:
        try:
            print(f"ok    {label}: {fn()}")
        except (Failure, helm.HelmError, yaml.YAMLError, OSError, subprocess.SubprocessError) as e:
            print(f"FAIL  {label}: {e}")
            failed.append(label)

    for name, (values, oldest, kinds) in SCENARIOS.items():
        step(f"render {name}", lambda: run_scenario(name, values, oldest, kinds, args.show == name))
    for name, (values, fragment) in MUST_FAIL.items():
        step(f"refuse {name}", lambda: run_must_fail(values, fragment))
    step("values documented", check_values_documented)
    step("Dockerfile", check_dockerfile)
    total = len(SCENARIOS) + len(MUST_FAIL) + 2
    if args.server_bin:
        step("server with the chart's env", lambda: check_server(args.server_bin, {}))
        step("server with the secured scenario's env", lambda: check_server(args.server_bin, SECURED))
        total += 2

    if failed:
        print(f"\n{total - len(failed)} passed, {len(failed)} failed: {', '.join(failed)}")
        return 1
    print(f"\n{total} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
