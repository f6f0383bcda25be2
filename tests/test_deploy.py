"""The container image and the Kubernetes manifests, checked against the code they package.

Nothing here needs Docker or a cluster. The Dockerfile is read with ``dockerfile-parse`` and the build
context with the Docker SDK's ``.dockerignore`` matcher; the manifests under ``deploy/`` are
validated against the Kubernetes API's own JSON schemas (bundled by the ``kubernetes-validate`` package, so
no network), then both are cross-checked against the CLI, the settings, the rule catalogue, the deployment
guide and each other. Every checker has tests showing that a broken file fails it.
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser
from pydantic import ValidationError

from rules import BUNDLED_CATALOG
from service.auth import load_clients
from service.cli import build_parser
from service.cli import main as cli_main
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
GUIDE = ROOT / "docs" / "deployment.md"
# The oldest Kubernetes release the manifests promise to work on, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
SETTINGS = {f"LUMBAR_{name.upper()}": name for name in Settings.model_fields}
CONFIGMAP_MAX_BYTES = 1024 * 1024  # the API server refuses a larger ConfigMap

# An exact release, [registry[:port]/]name:MAJOR.MINOR.PATCH[-variant][@sha256:digest], or name@sha256:digest.
PINNED_IMAGE = re.compile(
    r"(?:[\w.-]+(?::\d+)?/)?[\w./-]+"
    r"(?::\d+\.\d+\.\d+[\w.-]*(?:@sha256:[0-9a-f]{64})?|@sha256:[0-9a-f]{64})"
)
RUNS_LUMBAR_CHECK = re.compile(r"(?:^|&&|;|\|\|)\s*(?:\S*/)?lumbar\s+check\b")


def setting_problem(name: str, value: str) -> str | None:
    """Why ``name=value`` is not a valid LUMBAR_* setting, or None."""
    if name not in SETTINGS:
        return f"{name} is not a setting (service.settings.Settings has no field {name[7:].lower()!r})"
    try:
        Settings.model_validate({SETTINGS[name]: value})  # the settings' own validators
    except ValidationError as exc:
        return f"{name}={value!r}: {exc.errors()[0]['msg']}"
    return None


# ---- Dockerfile --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str  # upper case
    value: str  # the arguments, continuation lines joined


@dataclass(eq=False)
class Stage:
    name: str | None
    base: str  # ARGs substituted
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def split_stages(text: str) -> list[Stage]:
    """The build stages of a Dockerfile, read by ``dockerfile-parse`` (continuations joined, comments
    dropped, ARGs substituted in FROM lines)."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    bases = iter(parser.parent_images)
    stages: list[Stage] = []
    for item in parser.structure:
        instruction = Instruction(item["startline"] + 1, item["instruction"].upper(), item["value"].strip())
        if instruction.keyword == "FROM":
            words = [w for w in instruction.value.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name, next(bases), instruction.line))
        elif stages and instruction.keyword != "COMMENT":
            stages[-1].instructions.append(instruction)
    return stages


def build_context(dockerignore: str, root: Path = ROOT) -> set[str]:
    """The paths ``docker build`` sends from ``root`` under these ``.dockerignore`` rules (the Docker SDK's
    own matcher)."""
    patterns = [line.strip() for line in dockerignore.splitlines()]
    return set(exclude_paths(str(root), [p for p in patterns if p and not p.startswith("#")]))


def exec_form(instruction: Instruction | None) -> list[str] | None:
    if instruction is None or not instruction.value.startswith("["):
        return None
    value = json.loads(instruction.value)
    return value if isinstance(value, list) else None


def copy_sources(instruction: Instruction) -> tuple[str | None, list[str]]:
    """(the --from stage or image, None for the build context; the sources) of a COPY or ADD."""
    value, flags = instruction.value, {}
    while value.startswith("--"):
        flag, _, value = value.partition(" ")
        key, _, flag_value = flag[2:].partition("=")
        flags[key], value = flag_value, value.strip()
    words = json.loads(value) if value.startswith("[") else shlex.split(value)
    return flags.get("from"), words[:-1]


def _built(stages: list[Stage]) -> list[Stage]:
    """The final stage and every stage it is built from (FROM or COPY --from): what a build runs."""
    by_name = {stage.name: stage for stage in stages if stage.name}
    todo, seen = [stages[-1]], list[Stage]()
    while todo:
        stage = todo.pop()
        if stage not in seen:
            seen.append(stage)
            names = [stage.base] + [copy_sources(i)[0] or "" for i in stage.all("COPY")]
            todo += [by_name[name] for name in names if name in by_name]
    return seen


@dataclass
class ImageCheck:
    problems: list[str] = field(default_factory=list)
    uid: int | None = None  # the final stage's USER
    port: int | None = None  # what `lumbar serve` listens on


def check_dockerfile(text: str, dockerignore: str, root: Path = ROOT) -> ImageCheck:
    result = ImageCheck()
    problems = result.problems
    stages = split_stages(text)
    if not stages:
        return ImageCheck(["no FROM instruction"])
    names = {stage.name for stage in stages if stage.name}
    final = stages[-1]
    for stage in stages:
        if stage.base not in names and not PINNED_IMAGE.fullmatch(stage.base):
            problems.append(f"line {stage.line}: base image {stage.base!r} is not pinned to a patch release")

    context = build_context(dockerignore, root)
    for stage in stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            source_stage, sources = copy_sources(instruction)
            for source in sources if source_stage is None else []:
                where = f"line {instruction.line}: COPY source {source!r}"
                if not (root / source).exists():
                    problems.append(f"{where} is not in the repository")
                elif source.strip("/") not in context:
                    problems.append(f"{where} is excluded by .dockerignore")

    user = final.last("USER")
    uid = user.value.split(":")[0] if user else ""
    if user is None:
        problems.append("the final stage sets no USER: the service would run as root")
    elif not uid.isdigit() or int(uid) == 0:  # numeric, so that Kubernetes' runAsNonRoot can verify it
        problems.append(f"line {user.line}: USER {user.value} is root or not a numeric uid")
    else:
        result.uid = int(uid)

    scripts: dict[str, str] = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint, cmd = exec_form(final.last("ENTRYPOINT")), exec_form(final.last("CMD"))
    if not entrypoint or entrypoint[0] not in scripts:
        problems.append(f"ENTRYPOINT {entrypoint} is not a console script of pyproject [project.scripts]")
    else:
        module, _, function = scripts[entrypoint[0]].partition(":")
        if getattr(importlib.import_module(module), function) is not cli_main:  # whose parser is used here
            problems.append(f"console script {entrypoint[0]!r} is not service.cli:main")
        argv = entrypoint[1:] + (cmd or [])
        try:
            parsed = build_parser().parse_args(argv)
        except SystemExit:
            problems.append(f"ENTRYPOINT + CMD {argv} is not a valid `lumbar` command line")
        else:
            if parsed.command != "serve":
                problems.append(f"ENTRYPOINT + CMD {argv} does not run `lumbar serve`")
            else:
                result.port = parsed.port

    exposed = {word.split("/")[0] for i in final.all("EXPOSE") for word in i.value.split()}
    if result.port is not None and str(result.port) not in exposed:
        problems.append(f"EXPOSE {sorted(exposed)} does not include the served port {result.port}")
    healthcheck = final.last("HEALTHCHECK")
    url = f"http://127.0.0.1:{result.port}/healthz" if result.port else "/healthz"
    if healthcheck is None or url not in healthcheck.value:
        problems.append(f"no HEALTHCHECK calling {url}")
    if not any(RUNS_LUMBAR_CHECK.search(i.value) for stage in _built(stages) for i in stage.all("RUN")):
        problems.append("no RUN line runs `lumbar check`: a broken rule catalogue would not fail the build")

    env: dict[str, str] = {}
    for instruction in final.all("ENV"):
        for word in shlex.split(instruction.value):
            name, equals, value = word.partition("=")
            if not equals:
                problems.append(f"line {instruction.line}: write ENV as NAME=value")
            env[name] = value
            if name.startswith("LUMBAR_") and (problem := setting_problem(name, value)):
                problems.append(f"line {instruction.line}: ENV {problem}")
    # What the service writes (the SQLite database, the audit spill folder) must outlive the container.
    volumes = {v for i in final.all("VOLUME") for v in (exec_form(i) or i.value.split())}
    database = env.get("LUMBAR_DATABASE_URL", "")
    if database.startswith("sqlite") and ":///" in database:
        folder = str(Path(database.split(":///", 1)[1]).parent)
        if folder not in volumes:
            problems.append(f"the SQLite database's folder {folder} is not a VOLUME")
    if "LUMBAR_DATA_DIR" not in env:
        problems.append("no ENV LUMBAR_DATA_DIR: the data would go to the home folder, not the volume")
    elif env["LUMBAR_DATA_DIR"] not in volumes:
        problems.append(f"the data folder LUMBAR_DATA_DIR={env['LUMBAR_DATA_DIR']} is not a VOLUME")
    return result


def test_the_dockerfile_passes_every_check() -> None:
    result = check_dockerfile(DOCKERFILE.read_text(), DOCKERIGNORE.read_text())
    assert result.problems == []
    assert result.uid is not None and result.port is not None


DOCKERFILE_BREAKAGES = [
    (
        "COPY service/ service/",
        "COPY service/ service/\nCOPY LICENSE ./",
        "'LICENSE' is not in the repository",
    ),
    ("USER 10001:10001", "USER root", "USER root is root"),
    ("USER 10001:10001\n", "", "sets no USER"),
    ("python:3.11.16-slim-bookworm\n", "python:latest\n", "not pinned"),
    ("python:3.11.16-slim-bookworm\n", "python:3.11-slim-bookworm\n", "not pinned"),
    ("python:3.11.16-slim-bookworm\n", "python\n", "not pinned"),
    ("RUN lumbar check && lumbar test", "RUN lumbar test", "runs `lumbar check`"),
    ('ENTRYPOINT ["lumbar"]', 'ENTRYPOINT ["lumbar-cds"]', "not a console script"),
    ('"--workers", "2"', '"--workers", "two"', "not a valid `lumbar` command line"),
    (
        'CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]',
        'CMD ["check"]',
        "not run `lumbar serve`",
    ),
    ("127.0.0.1:8000/healthz", "127.0.0.1:8000/health", "no HEALTHCHECK"),
    ("EXPOSE 8000", "EXPOSE 8080", "does not include the served port 8000"),
    ("LUMBAR_DATA_DIR=", "LUMBAR_DATA_DIRECTORY=", "LUMBAR_DATA_DIRECTORY is not a setting"),
    ("LUMBAR_DATA_DIR=/var/lib/lumbar", "LUMBAR_DATABASE_URL=mysql:////x", "LUMBAR_DATABASE_URL='mysql:"),
    ("LUMBAR_DATA_DIR=/var/lib/lumbar", "LUMBAR_DATA_DIR=/srv", "LUMBAR_DATA_DIR=/srv is not a VOLUME"),
    (
        "LUMBAR_DATA_DIR=/var/lib/lumbar",
        "LUMBAR_DATABASE_URL=sqlite+aiosqlite:////srv/lumbar.db",
        "folder /srv is not a VOLUME",
    ),
    ('VOLUME ["/var/lib/lumbar"]', "", "is not a VOLUME"),
]


@pytest.mark.parametrize(("old", "new", "expected"), DOCKERFILE_BREAKAGES)
def test_a_broken_dockerfile_fails_the_check(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text  # the breakage must apply, or this test proves nothing
    problems = check_dockerfile(text.replace(old, new), DOCKERIGNORE.read_text()).problems
    assert any(expected in problem for problem in problems), problems


def test_a_copy_source_left_out_of_the_build_context_fails_the_check() -> None:
    ignore = DOCKERIGNORE.read_text()
    assert "!service/\n" in ignore
    problems = check_dockerfile(DOCKERFILE.read_text(), ignore.replace("!service/\n", "")).problems
    assert len(problems) == 1 and problems[0].endswith("COPY source 'service/' is excluded by .dockerignore")


# ---- Kubernetes manifests ----------------------------------------------------------------------------------


@dataclass
class Manifest:
    path: Path
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind"))

    @property
    def name(self) -> str:
        return str(self.doc.get("metadata", {}).get("name"))

    def __str__(self) -> str:
        return f"{self.path.name}: {self.kind}/{self.name}"


def load_manifests(directory: Path = DEPLOY) -> list[Manifest]:
    """Every YAML document under ``directory``, parsed as kubectl does (YAML 1.1: 0440 is octal)."""
    return [
        Manifest(path, doc)
        for path in sorted(directory.rglob("*.y*ml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def schema_problems(manifests: list[Manifest]) -> list[str]:
    problems = []
    for manifest in manifests:
        if manifest.kind == "Kustomization":  # a kustomize file, not an API object (checked on its own)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest.doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path)
                problems.append(f"{manifest}: Kubernetes {version}: {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{manifest}: {exc.message}")
    return problems


def pod_templates(manifests: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for manifest in manifests:
        spec = manifest.doc.get("spec", {})
        if manifest.kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield manifest, spec["template"]
        elif manifest.kind == "CronJob":
            yield manifest, spec["jobTemplate"]["spec"]["template"]


def guide_creates(text: str) -> dict[str, dict[str, list[str]]]:
    """ConfigMaps and Secrets the guide creates with kubectl: kind -> name -> its --from-file paths."""
    created: dict[str, dict[str, list[str]]] = {"ConfigMap": {}, "Secret": {}}
    for kind, name, rest in re.findall(
        r"create (configmap|secret generic) ([a-z0-9.-]+)([^\n|]*)", text.replace("\\\n", " ")
    ):
        paths = re.findall(r"--from-file=(\S+)", rest)
        created["ConfigMap" if kind == "configmap" else "Secret"].setdefault(name, []).extend(paths)
    return created


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _keys(manifest: Manifest) -> set[str]:
    return set(manifest.doc.get("data") or {}) | set(manifest.doc.get("stringData") or {})


class References:
    """The ConfigMaps and Secrets that exist: in deploy/ (examples included) or created by the guide."""

    def __init__(self, manifests: list[Manifest], guide: str) -> None:
        self.defined = {(m.kind, m.name): m for m in manifests if m.kind in ("ConfigMap", "Secret")}
        self.created = guide_creates(guide)

    def problem(self, kind: str, name: str, key: str | None, where: str) -> str | None:
        if (kind, name) in self.defined:
            keys = _keys(self.defined[kind, name])
            if key is not None and key not in keys:
                return f"{where}: {kind} {name} has no key {key!r} (it has {sorted(keys)})"
            return None
        if name in self.created[kind]:
            return None
        return f"{where}: {kind} {name} is neither in deploy/ nor created in docs/deployment.md"


def _pod_problems(owner: Manifest, pod: dict[str, Any], refs: References, image: ImageCheck) -> list[str]:
    """Hardening, resources, the command line, settings and references of one pod template."""
    problems: list[str] = []
    spec = pod["spec"]
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    security = spec.get("securityContext", {})
    if security.get("runAsNonRoot") is not True:
        problems.append(f"{owner}: the pod does not set runAsNonRoot: true")
    if image.uid is not None and security.get("runAsUser") != image.uid:
        problems.append(f"{owner}: runAsUser {security.get('runAsUser')} is not the image's USER {image.uid}")
    mounted: set[str] = set()
    for container in spec["containers"]:
        where = f"{owner}: container {container['name']}"
        context = container.get("securityContext", {})
        if context.get("readOnlyRootFilesystem") is not True or context.get("allowPrivilegeEscalation"):
            problems.append(
                f"{where}: needs readOnlyRootFilesystem: true and allowPrivilegeEscalation: false"
            )
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: does not drop ALL capabilities")
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            if not set(resources.get(part, {})) >= {"cpu", "memory"}:
                problems.append(f"{where}: resources.{part} needs cpu and memory")
        tag = container.get("image", "").rpartition(":")[2]
        if not container.get("image") or "/" in tag or tag == "latest":
            problems.append(f"{where}: image {container.get('image')!r} has no pinned tag")
        if "command" in container:
            problems.append(f"{where}: `command` would replace the image's `lumbar` entry point; use args")
        try:
            build_parser().parse_args(container.get("args", []))
        except SystemExit:
            problems.append(f"{where}: args {container.get('args')} are not a valid `lumbar` command line")
        for item in container.get("env", []):
            name, source = item["name"], item.get("valueFrom", {})
            # A literal value is checked here; a value from a Secret or ConfigMap where that is defined.
            checked = name.startswith("LUMBAR_") and (name not in SETTINGS or "value" in item)
            if checked and (problem := setting_problem(name, str(item.get("value", "")))):
                problems.append(f"{where}: {problem}")
            for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if key in source and (
                    problem := refs.problem(kind, source[key]["name"], source[key]["key"], where)
                ):
                    problems.append(problem)
        for env_from in container.get("envFrom", []):
            kind = "ConfigMap" if "configMapRef" in env_from else "Secret"
            ref_name = (env_from.get("configMapRef") or env_from["secretRef"])["name"]
            if problem := refs.problem(kind, ref_name, None, where):
                problems.append(problem)
            elif (kind, ref_name) in refs.defined:  # every variable it sets must be a valid setting
                data = refs.defined[kind, ref_name].doc.get("data", {})
                problems += [
                    f"{where}: {kind} {ref_name}: {problem}"
                    for name, value in data.items()
                    if name.startswith("LUMBAR_") and (problem := setting_problem(name, str(value)))
                ]
        for mount in container.get("volumeMounts", []):
            mounted.add(mount["name"])
            if mount["name"] not in volumes:
                problems.append(f"{where}: mounts {mount['name']!r}, which is not a volume of the pod")
        tmp = [m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0], {}):
            problems.append(f"{where}: /tmp is not an emptyDir (the root file system is read-only)")
    for name, volume in volumes.items():
        if name not in mounted:
            problems.append(f"{owner}: volume {name!r} is never mounted")
        for source in [volume, *volume.get("projected", {}).get("sources", [])]:
            for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if key not in source:
                    continue
                ref_name = source[key].get("name") or source[key].get("secretName")
                keys = [None, *(item["key"] for item in source[key].get("items", []))]
                for item_key in keys if (kind, ref_name) in refs.defined else [None]:
                    if problem := refs.problem(kind, ref_name, item_key, f"{owner}: volume {name}"):
                        problems.append(problem)
    return problems


def _deployment_problems(deployment: Manifest, refs: References, image: ImageCheck) -> list[str]:
    """The serving container: its command line, port and probes, and the files its settings point at."""
    problems: list[str] = []
    pod = deployment.doc["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if not _matches(deployment.doc["spec"]["selector"].get("matchLabels", {}), pod["metadata"]["labels"]):
        problems.append(f"{deployment}: the selector does not match the pod template's labels")
    try:
        serve = build_parser().parse_args(container.get("args", []))
    except SystemExit:
        serve = None  # reported with the other pod problems
    if serve is not None and (serve.command != "serve" or serve.port not in ports.values()):
        problems.append(f"{deployment}: args do not run `lumbar serve` on a declared containerPort")
    if image.port is not None and image.port not in ports.values():
        problems.append(f"{deployment}: containerPort {list(ports.values())} is not the image's {image.port}")
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or (
            get.get("port") not in ports and get.get("port") not in ports.values()
        ):
            problems.append(f"{deployment}: {probe} must GET {path} on a declared container port")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    if env.get("LUMBAR_RULES_DIR") not in mounts:
        problems.append(f"{deployment}: LUMBAR_RULES_DIR={env.get('LUMBAR_RULES_DIR')} is not a mountPath")
    clients = env.get("LUMBAR_CLIENTS_FILE")
    if clients is not None:
        folder, _, file = clients.rpartition("/")
        configmap = volumes.get(mounts.get(folder, ""), {}).get("configMap", {}).get("name")
        if configmap is None:
            problems.append(f"{deployment}: LUMBAR_CLIENTS_FILE={clients} is not in a mounted ConfigMap")
        elif problem := refs.problem("ConfigMap", configmap, file, f"{deployment}: LUMBAR_CLIENTS_FILE"):
            problems.append(problem)
    return problems


def manifest_problems(manifests: list[Manifest], guide: str, image: ImageCheck) -> list[str]:
    """Everything the schemas cannot see: names, labels, ports, paths and settings that must agree."""
    refs = References(manifests, guide)
    by_kind: dict[str, list[Manifest]] = {}
    for manifest in manifests:
        by_kind.setdefault(manifest.kind, []).append(manifest)
    if len(by_kind.get("Deployment", [])) != 1:
        return [f"expected one Deployment under deploy/, found {len(by_kind.get('Deployment', []))}"]
    (deployment,) = by_kind["Deployment"]
    labels = deployment.doc["spec"]["template"]["metadata"]["labels"]
    container = deployment.doc["spec"]["template"]["spec"]["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    others = [t["metadata"].get("labels", {}) for m, t in pod_templates(manifests) if m is not deployment]
    problems = _deployment_problems(deployment, refs, image)

    services = by_kind.get("Service", [])
    for owner, template in pod_templates(manifests):
        problems += _pod_problems(owner, template, refs, image)
        links = [s.name.upper().replace("-", "_") for s in services]  # LUMBAR_CDS_PORT=tcp://... and so on
        if any(link.startswith("LUMBAR_") for link in links) and template["spec"].get(
            "enableServiceLinks", True
        ):
            problems.append(
                f"{owner}: set enableServiceLinks: false (Service links inject LUMBAR_* variables)"
            )
    images = {c.get("image") for _, t in pod_templates(manifests) for c in t["spec"]["containers"]}
    if len(images) != 1:
        problems.append(f"the pods run different images: {images}")

    for service in services:
        selector = service.doc["spec"].get("selector", {})
        if not _matches(selector, labels):
            problems.append(f"{service}: the selector {selector} does not match the Deployment's pods")
        if any(_matches(selector, other) for other in others):
            problems.append(f"{service}: the selector also matches non-serving pods (the CronJob's)")
        for port in service.doc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if target not in ports and target not in ports.values():
                problems.append(f"{service}: targetPort {target!r} is not a container port of the Deployment")
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    for hpa in hpas:
        ref = hpa.doc["spec"]["scaleTargetRef"]
        if (ref.get("apiVersion"), ref["kind"], ref["name"]) != ("apps/v1", "Deployment", deployment.name):
            problems.append(f"{hpa}: scaleTargetRef {ref} is not the Deployment {deployment.name}")
        if "replicas" in deployment.doc["spec"]:
            problems.append(
                f"{deployment}: drop `replicas`, the HPA owns it (an apply would reset the count)"
            )
    for pdb in by_kind.get("PodDisruptionBudget", []):
        selector = pdb.doc["spec"]["selector"].get("matchLabels", {})
        if not _matches(selector, labels) or any(_matches(selector, other) for other in others):
            problems.append(f"{pdb}: the selector must match the Deployment's pods and only them")
        minimum = pdb.doc["spec"].get("minAvailable")
        if isinstance(minimum, int) and any(h.doc["spec"].get("minReplicas", 1) <= minimum for h in hpas):
            problems.append(f"{pdb}: minAvailable {minimum} leaves no pod a node drain may evict")

    settings = [m for m in by_kind.get("ConfigMap", []) if "LUMBAR_PUBLIC_BASE_URL" in _keys(m)]
    for ingress in by_kind.get("Ingress", []):
        for rule in ingress.doc["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                declared = [
                    port
                    for service in services
                    if service.name == backend["name"]
                    for p in service.doc["spec"]["ports"]
                    for port in ({"name": p.get("name")}, {"number": p["port"]})
                ]
                if backend["port"] not in declared:
                    problems.append(f"{ingress}: backend {backend} is not a port of a Service in deploy/")
            for configmap in settings:
                url = configmap.doc["data"]["LUMBAR_PUBLIC_BASE_URL"]
                if url != f"https://{rule.get('host')}":
                    problems.append(
                        f"{ingress}: host {rule.get('host')} is not LUMBAR_PUBLIC_BASE_URL ({url})"
                    )
    return problems


def materialise_rules_volume(deployment: Manifest, guide: str, target: Path) -> list[str]:
    """Lay out the rules volume as the kubelet would, from ConfigMaps built as the guide says."""
    spec = deployment.doc["spec"]["template"]["spec"]
    container = spec["containers"][0]
    rules_dir = next(e["value"] for e in container["env"] if e["name"] == "LUMBAR_RULES_DIR")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == rules_dir)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    created = guide_creates(guide)["ConfigMap"]
    problems = []
    for source in volume.get("projected", {}).get("sources", []) or [volume]:
        name = source["configMap"]["name"]
        if not created.get(name):
            problems.append(f"ConfigMap {name}: docs/deployment.md does not build it with --from-file")
            continue
        # kubectl create configmap --from-file=DIR: one key per regular file directly in DIR.
        data = {
            path.name: path.read_text()
            for folder in created[name]
            for path in sorted((ROOT / folder).iterdir())
            if path.is_file()
        }
        size = sum(len(value.encode()) for value in data.values())
        if size > CONFIGMAP_MAX_BYTES:
            problems.append(f"ConfigMap {name}: {size} bytes, over the API server's 1 MiB")
        items = source["configMap"].get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] not in data:
                problems.append(f"ConfigMap {name} has no key {item['key']!r} (listed in the volume's items)")
                continue
            (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            (target / item["path"]).write_text(data[item["key"]])
    return problems


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    (found,) = [m for m in manifests if m.kind == kind and (name is None or m.name == name)]
    return found


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    return load_manifests()


@pytest.fixture(scope="module")
def image() -> ImageCheck:
    return check_dockerfile(DOCKERFILE.read_text(), DOCKERIGNORE.read_text())


def test_every_manifest_is_valid_kubernetes(manifests: list[Manifest]) -> None:
    kinds = {m.kind for m in manifests}
    assert kinds >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "CronJob"}
    assert schema_problems(manifests) == []


@pytest.mark.parametrize(
    ("kind", "path", "value", "expected"),
    [
        ("Deployment", ("spec", "replicas"), "three", "spec.replicas: 'three' is not of type 'integer'"),
        (
            "Deployment",
            ("spec", "template", "spec", "containers", 0, "imagePulPolicy"),
            "Always",
            "'imagePulPolicy' was unexpected",
        ),
        ("CronJob", ("spec", "schedule"), None, "schedule"),
        ("PodDisruptionBudget", ("apiVersion",), "policy/v1beta1", "Couldn't find schema"),  # removed in 1.25
    ],
)
def test_a_manifest_the_api_would_refuse_fails_validation(
    manifests: list[Manifest], kind: str, path: tuple[str | int, ...], value: object, expected: str
) -> None:
    broken = copy.deepcopy(_one(manifests, kind))
    node: Any = broken.doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    problems = schema_problems([broken])
    assert problems and all(expected in p for p in problems), problems


def test_the_manifests_agree_with_each_other_and_with_the_code(
    manifests: list[Manifest], image: ImageCheck
) -> None:
    assert manifest_problems(manifests, GUIDE.read_text(), image) == []


DELETE = object()
CONTAINER = "spec.template.spec.containers.0"
PURGE = "spec.jobTemplate.spec.template.spec.containers.0"
# (kind, dotted path, new value or DELETE, a problem it must cause), each applied to a copy of the manifests.
BREAKAGES: list[tuple[str, str, Any, str]] = [
    ("Deployment", f"{CONTAINER}.readinessProbe.httpGet.path", "/healthz", "readinessProbe must GET /readyz"),
    ("Deployment", f"{CONTAINER}.livenessProbe.httpGet.path", "/readyz", "livenessProbe must GET /healthz"),
    ("Deployment", f"{CONTAINER}.startupProbe", DELETE, "startupProbe must GET /healthz"),
    ("Deployment", f"{CONTAINER}.env.0.name", "LUMBAR_RULE_DIR", "LUMBAR_RULE_DIR is not a setting"),
    ("Deployment", f"{CONTAINER}.env.0.value", "/etc/lumbar/rule", "is not a mountPath"),
    ("Deployment", f"{CONTAINER}.env.1.value", "/etc/lumbar/clients/client.yaml", "no key 'client.yaml'"),
    (
        "Deployment",
        f"{CONTAINER}.env.2.valueFrom.secretKeyRef.name",
        "lumbar-secret",
        "Secret lumbar-secret is",
    ),
    ("Deployment", f"{CONTAINER}.env.3.valueFrom.secretKeyRef.key", "auditkey", "no key 'auditkey'"),
    (
        "Deployment",
        f"{CONTAINER}.envFrom.0.configMapRef.name",
        "lumbar-setting",
        "ConfigMap lumbar-setting is",
    ),
    ("Deployment", f"{CONTAINER}.image", DELETE, "has no pinned tag"),
    ("Deployment", f"{CONTAINER}.image", "registry.example.org/lumbar-cds:latest", "has no pinned tag"),
    ("Deployment", f"{CONTAINER}.args.0", "serv", "not a valid `lumbar` command line"),
    ("Deployment", f"{CONTAINER}.args.4", "8080", "on a declared containerPort"),
    ("Deployment", f"{CONTAINER}.securityContext.readOnlyRootFilesystem", False, "readOnlyRootFilesystem"),
    ("Deployment", f"{CONTAINER}.volumeMounts.2.mountPath", "/scratch", "/tmp is not an emptyDir"),
    ("Deployment", f"{CONTAINER}.resources.limits", DELETE, "resources.limits"),
    ("Deployment", f"{CONTAINER}.command", ["python"], "`command` would replace"),
    ("Deployment", "spec.template.spec.securityContext.runAsUser", 0, "is not the image's USER 10001"),
    ("Deployment", "spec.template.spec.volumes.2.projected.sources.1.configMap.name", "x", "ConfigMap x is"),
    ("Deployment", "spec.template.spec.enableServiceLinks", DELETE, "enableServiceLinks"),
    ("Deployment", "spec.template.metadata.labels.app.kubernetes.io/component", "web", "does not match"),
    ("Deployment", "spec.replicas", 3, "the HPA owns it"),
    ("ConfigMap", "data.LUMBAR_FHIR_ALLOWLIST", "fhir.example.org", "not a FHIR base URL"),
    ("ConfigMap", "data.LUMBAR_LOG_LEVEL", "verbose", "LUMBAR_LOG_LEVEL='verbose'"),
    ("ConfigMap", "data.LUMBAR_PUBLIC_BASE_URL", "https://cds.example.com", "is not LUMBAR_PUBLIC_BASE_URL"),
    ("Service", "spec.selector.app.kubernetes.io/component", "purge", "non-serving pods"),
    ("Service", "spec.ports.0.targetPort", "web", "targetPort 'web'"),
    ("HorizontalPodAutoscaler", "spec.scaleTargetRef.name", "lumbar", "scaleTargetRef"),
    ("PodDisruptionBudget", "spec.minAvailable", 3, "leaves no pod"),
    (
        "PodDisruptionBudget",
        "spec.selector.matchLabels.app.kubernetes.io/component",
        "purge",
        "and only them",
    ),
    ("CronJob", f"{PURGE}.image", "registry.example.org/lumbar-cds:0.0.9", "different images"),
    ("CronJob", f"{PURGE}.args.0", "purg", "not a valid `lumbar` command line"),
    ("CronJob", "spec.jobTemplate.spec.template.spec.securityContext.runAsNonRoot", False, "runAsNonRoot"),
    ("Ingress", "spec.rules.0.http.paths.0.backend.service.port.name", "https", "not a port of a Service"),
]
_LABELS = ("app.kubernetes.io/component", "app.kubernetes.io/name")


def _split_path(dotted: str) -> list[str | int]:
    for label in _LABELS:  # label keys contain dots
        dotted = dotted.replace(label, label.replace(".", "\0"))
    return [int(p) if p.isdigit() else p.replace("\0", ".") for p in dotted.split(".")]


@pytest.mark.parametrize(
    ("kind", "path", "value", "expected"), BREAKAGES, ids=[f"{b[0]}:{b[1]}" for b in BREAKAGES]
)
def test_broken_cross_references_fail_the_check(
    manifests: list[Manifest], image: ImageCheck, kind: str, path: str, value: Any, expected: str
) -> None:
    broken = copy.deepcopy(manifests)
    target = next(m for m in broken if m.kind == kind and m.name not in ("lumbar-clients", "lumbar-secrets"))
    parts = _split_path(path)
    node: Any = target.doc
    for part in parts[:-1]:
        node = node[part]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    problems = manifest_problems(broken, GUIDE.read_text(), image)
    assert any(expected in problem for problem in problems), problems


def test_the_rules_configmaps_rebuild_the_bundled_catalogue(
    manifests: list[Manifest], tmp_path: Path
) -> None:
    """The guide's kubectl commands and the projected volume give the service the catalogue's exact layout."""
    assert materialise_rules_volume(_one(manifests, "Deployment"), GUIDE.read_text(), tmp_path) == []
    assert _tree(tmp_path) == _tree(BUNDLED_CATALOG)


def test_a_value_set_missing_from_the_projected_volume_is_caught(
    manifests: list[Manifest], tmp_path: Path
) -> None:
    deployment = copy.deepcopy(_one(manifests, "Deployment"))
    rules = next(v for v in deployment.doc["spec"]["template"]["spec"]["volumes"] if v["name"] == "rules")
    items = rules["projected"]["sources"][1]["configMap"]["items"]
    dropped = items.pop()
    assert materialise_rules_volume(deployment, GUIDE.read_text(), tmp_path / "a") == []
    assert set(_tree(BUNDLED_CATALOG)) - set(_tree(tmp_path / "a")) == {dropped["path"]}
    items.append({"key": "no-such-set.yaml", "path": "valuesets/no-such-set.yaml"})
    assert materialise_rules_volume(deployment, GUIDE.read_text(), tmp_path / "b") == [
        "ConfigMap lumbar-valuesets has no key 'no-such-set.yaml' (listed in the volume's items)"
    ]
    problems = materialise_rules_volume(deployment, "", tmp_path / "c")
    assert problems == [
        f"ConfigMap {name}: docs/deployment.md does not build it with --from-file"
        for name in ("lumbar-rules", "lumbar-valuesets", "lumbar-expansions")
    ]


def test_the_kustomization_lists_the_manifests_but_not_the_examples(manifests: list[Manifest]) -> None:
    kustomization = _one(manifests, "Kustomization").doc
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == {name for name in files if ".example." not in name}
    assert {name for name in files if ".example." in name} >= {"secret.example.yaml"}
    (image,) = {c["image"] for _, t in pod_templates(manifests) for c in t["spec"]["containers"]}
    assert [entry["name"] for entry in kustomization["images"]] == [image.rpartition(":")[0]]


def test_the_example_secret_cannot_start_a_service(manifests: list[Manifest]) -> None:
    """Placeholders applied by mistake are refused by the settings instead of becoming known keys."""
    secret = _one(manifests, "Secret", "lumbar-secrets")
    container = _one(manifests, "Deployment").doc["spec"]["template"]["spec"]["containers"][0]
    variables = {
        e["valueFrom"]["secretKeyRef"]["key"]: e["name"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(variables) == set(secret.doc["stringData"])
    for key, value in secret.doc["stringData"].items():
        assert setting_problem(variables[key], value) is not None, key


def test_the_example_clients_file_loads(manifests: list[Manifest], tmp_path: Path) -> None:
    clients = _one(manifests, "ConfigMap", "lumbar-clients")
    for name, text in clients.doc["data"].items():
        (tmp_path / name).write_text(text)
    assert set(load_clients(tmp_path / "clients.yaml")) == {"https://ehr.example.org"}
