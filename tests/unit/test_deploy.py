"""Offline checks of the deployment files under deploy/ (no container engine runs here):
Kubernetes manifests against the Kubernetes API schemas, the compose file's wiring, the
worker environment of both through the project's own settings loader, and the image's
contents through a real wheel build."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from parcel_stream.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KNOWN = {PREFIX + f.name.upper() for f in fields(Settings)}


def k8s_docs(workbench: bool = False) -> dict[str, dict[str, Any]]:
    """The worker's manifests by kind (or the workbench's, ``workbench.yaml``)."""
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml" or (path.name == "workbench.yaml") != workbench:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def settings_from(env: dict[str, str], tmp_path: Path) -> Settings:
    """The settings a worker would build from ``env``: unknown PARCEL_* names are an
    error here (the loader would ignore a misspelt one); file paths point at a stand-in."""
    unknown = {k for k in env if k.startswith(PREFIX)} - KNOWN
    assert not unknown, f"not settings: {sorted(unknown)}"
    stand_in = tmp_path / "ca.crt"
    stand_in.write_text("stand-in")
    env = {k: (str(stand_in) if k.endswith("_FILE") and v else v) for k, v in env.items()}
    return Settings.from_env(env)


@pytest.mark.parametrize("version", ["1.28.0", "1.30.0", kubernetes_validate.latest_version()])
def test_kubernetes_manifests_match_the_api_schemas(version: str) -> None:
    for kind, doc in [*k8s_docs().items(), *k8s_docs(workbench=True).items()]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind} invalid for Kubernetes {version}: {e.message}")


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_kubernetes_worker_configuration_is_valid(tmp_path: Path) -> None:
    docs = k8s_docs()
    cm, secret, deploy = docs["ConfigMap"], docs["Secret"], docs["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = dict(cm["data"])
    for e in container["env"]:
        ref = e["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"], ref
        env[e["name"]] = secret["stringData"][ref["key"]]
    s = settings_from(env, tmp_path)
    assert s.kafka_security_protocol == "SASL_SSL" and s.redis_url.startswith("rediss://")
    assert container["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"]
    # probes and the metrics port match what the worker serves
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == s.metrics_port
    svc = docs["Service"]
    assert svc["spec"]["ports"][0]["port"] == s.metrics_port
    assert (
        svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    )
    # the CA file the settings name is the one the secret volume mounts
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    tls = vols["tls"]["secret"]
    assert tls["secretName"] == secret["metadata"]["name"]
    assert cm["data"]["PARCEL_KAFKA_SSL_CA_FILE"] == f"{mounts['tls']}/{tls['items'][0]['path']}"
    assert tls["items"][0]["key"] in secret["stringData"]
    assert (
        mounts["data"]
        == Settings.from_env(
            dict(re.findall(r"(PARCEL_\w+)=(\S+)", (DEPLOY / "Dockerfile").read_text()))
        ).data_dir
    )


def test_kubernetes_workbench_configuration_is_valid(tmp_path: Path) -> None:
    docs, wb = k8s_docs(), k8s_docs(workbench=True)
    cm, secret = docs["ConfigMap"], docs["Secret"]
    deploy, svc = wb["Deployment"], wb["Service"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["workbench", "serve"]
    env = dict(cm["data"])
    for e in container["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
            env[e["name"]] = secret["stringData"][ref["key"]]
        else:
            env[e["name"]] = e["value"]
    s = settings_from(env, tmp_path)
    assert s.workbench_db.startswith("postgresql://") and s.workbench_secure_cookies
    assert container["ports"][0]["containerPort"] == s.workbench_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert svc["spec"]["ports"][0]["port"] == s.workbench_port
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    # the workers' metrics Service does not select the workbench's pods
    assert not docs["Service"]["spec"]["selector"].items() <= labels.items()


def test_compose_wiring(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "prometheus", "grafana", "workbench",
            "postgres"} <= services.keys()  # fmt: skip
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--appendfsync always" in redis_cmd
    s = settings_from({k: str(v) for k, v in services["worker"]["environment"].items()}, tmp_path)
    init = services["kafka-init"]["command"][0]
    for topic in (s.topic_manifests, s.topic_holds, s.topic_decisions, s.topic_rejects,
                  s.topic_exam_results):  # fmt: skip
        assert topic in init
    assert f"--partitions {s.partitions}" in init
    build = services["worker"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    # Prometheus finds the workers under the compose service name and loads the rules
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert set(jobs) == {"parcel-stream", "parcel-stream-workbench"}
    job = jobs["parcel-stream"]
    assert job["dns_sd_configs"][0]["names"] == ["worker"]
    assert job["dns_sd_configs"][0]["port"] == s.metrics_port
    # and the workbench under its service name, on its port, with its case store
    wb_env = {k: str(v) for k, v in services["worker"]["environment"].items()}
    wb_env.update({k: str(v) for k, v in services["workbench"]["environment"].items()
                   if not k.startswith("<")})  # fmt: skip
    wb = settings_from(wb_env, tmp_path)
    assert jobs["parcel-stream-workbench"]["dns_sd_configs"][0]["names"] == ["workbench"]
    assert jobs["parcel-stream-workbench"]["dns_sd_configs"][0]["port"] == wb.workbench_port
    assert wb.workbench_db.startswith("postgresql://") and "@postgres:" in wb.workbench_db
    assert services["workbench"]["command"] == ["workbench", "serve"]
    mounted = [v.split(":")[1] for v in services["prometheus"]["volumes"]]
    assert "/etc/prometheus/alerts.yml" in mounted


def test_grafana_provisioning_matches_the_dashboard() -> None:
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    prov = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/parcel-stream.yml").read_text()
    )
    dash = json.loads((DEPLOY / "grafana/dashboards/parcel-stream.json").read_text())
    (source,) = ds["datasources"]
    var = next(v for v in dash["templating"]["list"] if v["name"] == "datasource")
    assert var["current"]["value"] == source["uid"]
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    path = prov["providers"][0]["options"]["path"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert any(v.endswith(f":{path}:ro") for v in compose["services"]["grafana"]["volumes"])


def test_image_contents_from_a_real_wheel_build(tmp_path: Path) -> None:
    """The Dockerfile copies these sources and installs the wheel they build: the wheel
    has the worker's code, its rule set and the console script the image runs."""
    docker = (DEPLOY / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", docker, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"
    assert 'ENTRYPOINT ["parcel-stream"]' in docker
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("parcel_stream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "agents/app.py" in names
    assert "parcel_stream/rulesets/default.toml" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "parcel-stream = parcel_stream.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
