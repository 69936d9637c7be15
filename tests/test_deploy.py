"""The deployment files, checked by parsing them: this machine has no Docker engine and no
cluster.

Every command line in the Dockerfile, the Kubernetes manifests, the systemd unit and the
crontab must be one the CLI accepts (``worker.cli.parse``, every flag spelled in full), with
the properties deploy/README.md promises; the manifests must match the Kubernetes API's
schemas and keep their security settings. The Kubernetes workloads are also rehearsed: their
exact argv and environment run against the emulator, each volume a directory, so the paths,
the shard directories, ``latest``, merge and the metrics file are shown to work together.
The command lines shown in deploy/README.md and the README are parsed too.

Each check is a function that raises AssertionError; the tests at the end break the files
on purpose (a misspelled flag, a secret in args, a grace period shorter than the drain) and
show that the checks catch it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import orjson
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from worker import cli
from worker.config import Config
from worker.emulator import Emulator, EmulatorConfig
from worker.members import Channel
from worker.regions import endpoint as region_endpoint
from worker.shards import Shard, parse_shard, shard_of

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"

Doc = dict[str, Any]

# The oldest Kubernetes the manifests claim (backoffLimitPerIndex, podFailurePolicy) and the
# newest the schemas know.
KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())

# What the Secret holds, in the tests: distinctive, so an argument that carries one is found.
SECRETS = {
    "HUAWEICLOUD_SDK_AK": "AKDEPLOYCHECK7Q2W",
    "HUAWEICLOUD_SDK_SK": "skDeployCheck-9f41c7e2b05d",
}
CREDENTIAL_NAME = re.compile(r"(^|_)(AK|SK|SECRET|PASSWORD|TOKEN|CREDENTIALS?)($|_)")
POD_NAME = "vpc-members-merge-x7k2p"


# -- the CLI -------------------------------------------------------------------------------------


def _flags_of(command: str) -> set[str]:
    parser = cli.build_parser(command)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices[command]._option_string_actions)
    raise AssertionError("the CLI has no commands")


def accepted(
    argv: Sequence[str], env: Mapping[str, str], where: str
) -> tuple[argparse.Namespace, Config | None]:
    """What ``worker.cli.parse`` makes of ``argv`` (``vpc-members`` first) in ``env``;
    AssertionError, naming ``where``, when the CLI would refuse it."""
    assert argv, f"{where}: an empty command line"
    assert PurePosixPath(argv[0]).name == "vpc-members", f"{where}: runs {argv[0]!r}"
    args = list(argv[1:])
    command = next((arg for arg in args if arg in cli._HELP), None)
    assert command is not None, f"{where}: no vpc-members command in {args}"
    # argparse takes a unique prefix for a flag, so --max-prun would pass; a flag that is
    # not spelled out is a typo waiting for the next option to make it ambiguous.
    flags = _flags_of(command)
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("-") and arg != "-" and not re.fullmatch(r"-\d+(\.\d*)?", arg):
            name = arg.split("=", 1)[0]
            assert name in flags, f"{where}: {name} is not a flag of `vpc-members {command}`"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            namespace, config = cli.parse(args, env)
    except cli.UsageError as exc:
        raise AssertionError(f"{where}: vpc-members refuses {args}: {exc}") from None
    except SystemExit as exc:
        raise AssertionError(
            f"{where}: vpc-members exits {exc.code} on {args}: {stderr.getvalue().strip()}"
        ) from None
    if config is not None and config.shard is not None:
        # Checked when the run starts, not by parse: check it here.
        try:
            parse_shard(config.shard, env)
        except ValueError as exc:
            raise AssertionError(f"{where}: --shard {config.shard}: {exc}") from None
    return namespace, config


def _config(argv: Sequence[str], env: Mapping[str, str], where: str, command: str) -> Config:
    namespace, config = accepted(argv, env, where)
    assert namespace.command == command, f"{where}: runs {namespace.command}, not {command}"
    assert config is not None
    return config


# -- the Dockerfile and .dockerignore -------------------------------------------------------------


@dataclass(frozen=True)
class Dockerfile:
    instructions: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> Dockerfile:
        instructions: list[tuple[str, str]] = []
        pending = ""
        for line in text.splitlines():
            stripped = line.strip()
            # Docker drops comment lines, even inside a continued instruction.
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            keyword, _, rest = (pending + stripped).partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
        assert not pending, "Dockerfile: the last instruction is continued past the end"
        return cls(tuple(instructions))

    def all(self, keyword: str) -> list[str]:
        return [rest for name, rest in self.instructions if name == keyword]

    def exec_form(self, keyword: str) -> list[str]:
        found = self.all(keyword)
        assert found, f"Dockerfile: no {keyword}"
        value = json.loads(found[-1])
        assert isinstance(value, list), f"Dockerfile: {keyword} is not in exec form"
        return [str(item) for item in value]

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for rest in self.all("ENV"):
            words = shlex.split(rest)
            if all("=" in word for word in words):
                for word in words:
                    name, _, value = word.partition("=")
                    env[name] = value
            else:
                env[words[0]] = " ".join(words[1:])
        return env

    @property
    def uid(self) -> int:
        users = self.all("USER")
        assert users, "Dockerfile: no USER, so the image runs as root"
        user, _, group = users[-1].partition(":")
        # Kubernetes can only check runAsNonRoot against a numeric user.
        assert user.isdigit(), f"Dockerfile: USER {users[-1]} is not numeric"
        assert int(user) != 0 and group != "0", f"Dockerfile: USER {users[-1]} is root"
        return int(user)

    def mounts(self) -> list[dict[str, str]]:
        found = []
        for rest in self.all("RUN"):
            for spec in re.findall(r"--mount=(\S+)", rest):
                found.append(dict(part.split("=", 1) for part in spec.split(",") if "=" in part))
        return found


def _ignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as Docker reads it: Go's filepath.Match with ``**``, ``!`` for an
    exception, the last matching line wins, and a pattern that matches a directory matches
    everything under it."""
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((not exception, re.compile(regex + r"\Z")))
    return patterns


def in_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    kept = True
    for excludes, regex in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            kept = not excludes
    return kept


def check_dockerfile(image: Dockerfile, dockerignore: str) -> None:
    (base,) = image.all("FROM")
    assert re.fullmatch(r"python:3\.1[12]-slim(-[a-z]+)?", base), f"Dockerfile: FROM {base}"
    env = image.env
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "Dockerfile: PYTHONDONTWRITEBYTECODE"
    assert env.get("PYTHONUNBUFFERED") == "1", "Dockerfile: PYTHONUNBUFFERED"
    for keyword in ("ENV", "ARG"):
        for rest in image.all(keyword):
            for word in shlex.split(rest):
                name = word.split("=", 1)[0]
                assert not CREDENTIAL_NAME.search(name) and not name.startswith("HUAWEICLOUD_"), (
                    f"Dockerfile: {keyword} {name} would bake a credential into the image"
                )
    uid = image.uid
    assert any(f"--uid {uid}" in run for run in image.all("RUN")), f"Dockerfile: no user {uid}"
    assert image.exec_form("ENTRYPOINT") == ["vpc-members"], "Dockerfile: ENTRYPOINT"
    # No compiler in the image: every install takes wheels only, the dependencies pinned.
    installs = [run for run in image.all("RUN") if "pip install" in run]
    assert installs, "Dockerfile: nothing is installed"
    for run in installs:
        assert "--only-binary=:all:" in run, f"Dockerfile: pip may build from source: {run}"
    assert any(re.search(r"\s-c\s+\S*constraints\.txt", run) for run in installs), (
        "Dockerfile: the dependencies are not installed under deploy/constraints.txt"
    )
    patterns = _ignore_patterns(dockerignore)
    for mount in image.mounts():
        if mount.get("type") != "bind":
            continue
        source = mount.get("source", ".")
        assert source == "." or (ROOT / source).is_file(), f"Dockerfile: no {source} to mount"
        assert source == "." or in_context(source, patterns), (
            f"Dockerfile: mounts {source}, which .dockerignore leaves out of the context"
        )
    # Reports and the lock on the volume, in a directory the CLI creates 0700 itself.
    config = _config(["vpc-members", "run", "in.csv"], env, "Dockerfile", "run")
    reports = PurePosixPath(str(config.reports_dir))
    volumes = [PurePosixPath(v) for rest in image.all("VOLUME") for v in json.loads(rest)]
    assert any(reports.is_relative_to(v) and reports != v for v in volumes), (
        f"Dockerfile: the reports directory {reports} is not inside a VOLUME {volumes}"
    )
    (workdir,) = image.all("WORKDIR")
    assert PurePosixPath(workdir) in volumes, f"Dockerfile: WORKDIR {workdir} is not a VOLUME"


# -- Kubernetes ------------------------------------------------------------------------------------


def documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] == "CronJob":
        spec: Doc = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    if doc["kind"] in ("Job", "Deployment"):
        spec = doc["spec"]["template"]["spec"]
        return spec
    return None


def job_spec(doc: Doc) -> Doc:
    if doc["kind"] == "CronJob":
        spec: Doc = doc["spec"]["jobTemplate"]["spec"]
        return spec
    assert doc["kind"] == "Job"
    spec = doc["spec"]
    return spec


def one(docs: Sequence[Doc], kind: str, where: str) -> Doc:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"{where}: {len(found)} {kind}s, expected one"
    return found[0]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) in command, args and env values: a variable the container does not
    define is left as it is, and $$ is a literal $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, text)


@dataclass(frozen=True)
class Mount:
    path: PurePosixPath
    source: str  # the same for every pod that mounts the same claim or ConfigMap
    writable: bool


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]  # what the process sees: the image's ENV, then the container's


@dataclass(frozen=True)
class Container:
    where: str
    doc: Doc
    pod: Doc
    spec: Doc

    @property
    def ours(self) -> bool:
        return "/vpc-members:" in "/" + str(self.spec["image"])

    def mounts(self) -> list[Mount]:
        volumes = {volume["name"]: volume for volume in self.pod.get("volumes", [])}
        found = []
        for mount in self.spec.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            writable = not mount.get("readOnly", False)
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]
                source = f"pvc/{claim['claimName']}"
                writable = writable and not claim.get("readOnly", False)
            elif "configMap" in volume:
                source, writable = f"configmap/{volume['configMap']['name']}", False
            elif "emptyDir" in volume:
                source = f"emptydir/{self.where}/{volume['name']}"
            else:
                raise AssertionError(f"{self.where}: an unexpected volume {volume}")
            found.append(Mount(PurePosixPath(mount["mountPath"]), source, writable))
        return found

    def mount_of(self, path: str | Path) -> tuple[Mount, PurePosixPath]:
        """The mount ``path`` is on, and where on it; AssertionError when it is on none (the
        root filesystem is read-only)."""
        target = PurePosixPath(str(path))
        assert target.is_absolute(), f"{self.where}: {target} is relative"
        for mount in sorted(self.mounts(), key=lambda m: -len(m.path.parts)):
            if target.is_relative_to(mount.path):
                return mount, target.relative_to(mount.path)
        raise AssertionError(f"{self.where}: {target} is on no volume")

    def launch(
        self, image: Dockerfile, index: int | None = None, pod_name: str = POD_NAME
    ) -> Launch:
        # The image's ENTRYPOINT and CMD are known for this project's image only.
        assert self.ours or "command" in self.spec, f"{self.where}: another image's entrypoint"
        declared: dict[str, str] = {}
        for item in self.spec.get("env", []):
            if "value" in item:
                declared[item["name"]] = expand(str(item["value"]), declared)
            else:
                source = item["valueFrom"]
                declared[item["name"]] = _value_from(source, index, pod_name, self.where)
        if index is not None:
            declared.setdefault("JOB_COMPLETION_INDEX", str(index))  # as the Job controller does
        command = self.spec.get("command") or image.exec_form("ENTRYPOINT")
        if "args" in self.spec:
            args = self.spec["args"]
        else:
            args = [] if "command" in self.spec else image.exec_form("CMD")
        argv = [expand(str(arg), declared) for arg in [*command, *args]]
        for arg in argv:
            assert "$(" not in arg, f"{self.where}: {arg!r} names a variable it does not define"
        return Launch(argv, {**image.env, **declared})


def _value_from(source: Doc, index: int | None, pod_name: str, where: str) -> str:
    if "secretKeyRef" in source:
        key = source["secretKeyRef"]["key"]
        assert key in SECRETS, f"{where}: a secret key {key} the tests know no value for"
        return SECRETS[key]
    path = source.get("fieldRef", {}).get("fieldPath")
    if path == "metadata.name":
        return pod_name
    if path == "metadata.annotations['batch.kubernetes.io/job-completion-index']":
        assert index is not None, f"{where}: a completion index outside an Indexed Job"
        return str(index)
    raise AssertionError(f"{where}: an env source the tests cannot fill: {source}")


def containers(doc: Doc, where: str) -> list[Container]:
    pod = pod_spec(doc)
    if pod is None:
        return []
    found = [*pod.get("initContainers", []), *pod["containers"]]
    return [Container(f"{where} {doc['kind']}/{c['name']}", doc, pod, c) for c in found]


def ours(docs: Sequence[Doc], where: str) -> Container:
    found = [c for doc in docs for c in containers(doc, where) if c.ours]
    assert len(found) == 1, f"{where}: {len(found)} vpc-members containers, expected one"
    return found[0]


def check_schema(docs: Sequence[Doc], where: str) -> None:
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                message = str(exc).splitlines()[0]
                raise AssertionError(
                    f"{where} {doc['kind']} (Kubernetes {version}): {message}"
                ) from None


def check_security(doc: Doc, image: Dockerfile, where: str) -> None:
    pod = pod_spec(doc)
    assert pod is not None
    context = pod.get("securityContext", {})
    assert context.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
    assert isinstance(context.get("runAsUser"), int) and context["runAsUser"] != 0, (
        f"{where}: runAsUser"
    )
    assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp"
    assert pod.get("automountServiceAccountToken") is False, f"{where}: service account token"
    if "fsGroup" in context:
        # Always (the default) would make the reports directories group-writable at every
        # mount, and the CLI refuses to write into such a directory.
        assert context.get("fsGroupChangePolicy") == "OnRootMismatch", (
            f"{where}: fsGroup without fsGroupChangePolicy: OnRootMismatch"
        )
    for container in containers(doc, where):
        spec = container.spec
        security = spec.get("securityContext", {})
        assert security.get("allowPrivilegeEscalation") is False, f"{container.where}: escalation"
        assert security.get("readOnlyRootFilesystem") is True, f"{container.where}: read-only root"
        assert "ALL" in security.get("capabilities", {}).get("drop", []), (
            f"{container.where}: capabilities are not all dropped"
        )
        resources = spec.get("resources", {})
        for kind in ("requests", "limits"):
            for name in ("cpu", "memory"):
                assert name in resources.get(kind, {}), f"{container.where}: no {kind}.{name}"
        if container.ours:
            assert context["runAsUser"] == image.uid, f"{where}: not the image's user"
            # Service links put <SERVICE>_* variables in the environment, where a Service
            # named vpc-members-<something> would meet the CLI's VPC_MEMBERS_<OPTION>.
            assert pod.get("enableServiceLinks") is False, f"{where}: enableServiceLinks"
    if doc["kind"] in ("Job", "CronJob"):
        assert pod.get("restartPolicy") == "Never", f"{where}: restartPolicy"


def check_credentials(container: Container, launch: Launch, needs: bool) -> None:
    """Credentials come from a Secret into the environment, and never reach the command
    line (``ps`` shows it, and so does ``kubectl get pod -o yaml``)."""
    for item in container.spec.get("env", []):
        if CREDENTIAL_NAME.search(item["name"]):
            assert "secretKeyRef" in item.get("valueFrom", {}), (
                f"{container.where}: {item['name']} is not taken from a Secret"
            )
    for arg in launch.argv:
        for name, value in SECRETS.items():
            assert value not in arg, f"{container.where}: {name} is on the command line"
    given = {item["name"] for item in container.spec.get("env", []) if "valueFrom" in item}
    if needs:
        assert {"HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK"} <= given, (
            f"{container.where}: no AK/SK from a Secret"
        )
    else:
        assert not given & set(SECRETS), f"{container.where}: credentials it does not need"


def check_writes(container: Container, config: Config) -> None:
    """Everything the CLI writes is on a writable volume (the root filesystem is read-only),
    and the reports directory is one the CLI creates, not a volume's root: with fsGroup, a
    volume's root is group-writable, and the CLI refuses such a reports directory."""
    reports_mount, where = container.mount_of(config.reports_dir)
    assert reports_mount.writable, f"{container.where}: the reports are on a read-only volume"
    assert where.parts, f"{container.where}: the reports directory is a volume's root"
    written = [config.lock_file or config.reports_dir / ".lock"]
    written += [path for path in (config.metrics_file, config.log_file) if path is not None]
    for path in written:
        mount, _ = container.mount_of(path)
        assert mount.writable, f"{container.where}: {path} is on a read-only volume"
    for source in config.inputs:
        container.mount_of(source)


def check_grace(container: Container, config: Config) -> None:
    grace = container.pod.get("terminationGracePeriodSeconds", 30)
    assert grace > config.drain_timeout, (
        f"{container.where}: terminationGracePeriodSeconds {grace} does not outlast "
        f"--drain-timeout {config.drain_timeout:g}: SIGKILL would cut the drain short"
    )


def _cron_schedule(schedule: str, where: str) -> None:
    fields = schedule.split()
    assert len(fields) == 5, f"{where}: schedule {schedule!r} is not five fields"
    for text, (low, high) in zip(fields, ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7)), strict=True):
        for part in text.split(","):
            base, slash, step = part.partition("/")
            assert not slash or (step.isdigit() and int(step) > 0), f"{where}: {part!r}"
            if base == "*":
                continue
            first, _, last = base.partition("-")
            bounds = [first, *([last] if last else [])]
            assert all(b.isdigit() and low <= int(b) <= high for b in bounds), f"{where}: {part!r}"


def check_sync_config(config: Config, where: str) -> None:
    assert config.prune, f"{where}: does not --prune"
    assert config.max_prune == 20, f"{where}: --max-prune {config.max_prune:g}, not 20"
    assert config.region or config.endpoint, f"{where}: neither --region nor --endpoint"
    assert config.metrics_file is not None, f"{where}: no --metrics-file"
    assert config.metrics_file.suffix == ".prom", (
        f"{where}: node_exporter's textfile collector reads only *.prom files"
    )
    assert not config.dry_run and not config.emulator and not config.insecure, where


def check_cronjob(docs: Sequence[Doc], image: Dockerfile) -> Config:
    """cronjob-sync.yaml; returns the sync's Config."""
    where = "cronjob-sync.yaml"
    check_schema(docs, where)
    cron = one(docs, "CronJob", where)
    spec = cron["spec"]
    _cron_schedule(spec["schedule"], where)
    assert spec.get("concurrencyPolicy") == "Forbid", f"{where}: concurrencyPolicy"
    assert isinstance(spec.get("startingDeadlineSeconds"), int), f"{where}: startingDeadline"
    job = job_spec(cron)
    assert job.get("backoffLimit") in (0, 1, 2), f"{where}: backoffLimit {job.get('backoffLimit')}"
    assert isinstance(job.get("activeDeadlineSeconds"), int), f"{where}: activeDeadlineSeconds"
    for doc in docs:
        if pod_spec(doc) is not None:
            check_security(doc, image, f"{where} {doc['kind']}")
    container = ours(docs, where)
    launch = container.launch(image)
    config = _config(launch.argv, launch.env, container.where, "sync")
    check_sync_config(config, container.where)
    check_credentials(container, launch, needs=True)
    check_writes(container, config)
    check_grace(container, config)
    assert config.metrics_file is not None
    for source in config.inputs:
        assert not container.mount_of(source)[0].writable, f"{where}: the inventory is writable"
    # The metrics file is served by the exporter beside it, from the same volume.
    metrics_mount, metrics_at = container.mount_of(config.metrics_file)
    exporters = [
        (c, arg.split("=", 1)[1])
        for doc in docs
        for c in containers(doc, where)
        for arg in c.spec.get("args", [])
        if arg.startswith("--collector.textfile.directory=")
    ]
    assert len(exporters) == 1, f"{where}: no textfile collector reads the metrics"
    exporter, directory = exporters[0]
    served_mount, served_at = exporter.mount_of(directory)
    assert (served_mount.source, served_at) == (metrics_mount.source, metrics_at.parent), (
        f"{where}: the exporter reads {directory}, not the directory of {config.metrics_file}"
    )
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    claim = claims.get(metrics_mount.source.removeprefix("pvc/"))
    if claim is not None and claim["spec"]["accessModes"] == ["ReadWriteOnce"]:
        # One node at a time: the sync must be scheduled where the exporter runs.
        rules = (
            container.pod.get("affinity", {})
            .get("podAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", [])
        )
        labels = exporter.doc["spec"]["template"]["metadata"]["labels"]
        assert any(
            rule["topologyKey"] == "kubernetes.io/hostname"
            and rule["labelSelector"]["matchLabels"].items() <= labels.items()
            for rule in rules
        ), f"{where}: the sync may land on another node than the exporter of its volume"
    return config


def check_shards(
    docs: Sequence[Doc], image: Dockerfile, sync: Config
) -> list[tuple[str, PurePosixPath]]:
    """indexed-job-shards.yaml; returns each shard's reports directory (volume, path on it)."""
    where = "indexed-job-shards.yaml"
    check_schema(docs, where)
    job = one(docs, "Job", where)
    spec = job_spec(job)
    assert spec.get("completionMode") == "Indexed", f"{where}: completionMode"
    count = spec["completions"]
    assert spec.get("parallelism") == count, f"{where}: parallelism is not completions"
    # Per index: one shard's failure must not stop the others halfway.
    assert isinstance(spec.get("backoffLimitPerIndex"), int), f"{where}: backoffLimitPerIndex"
    assert isinstance(spec.get("activeDeadlineSeconds"), int), f"{where}: activeDeadlineSeconds"
    check_security(job, image, where)
    container = ours(docs, where)
    dirs, rates, inputs = [], [], set()
    for index in range(count):
        launch = container.launch(image, index)
        config = _config(launch.argv, launch.env, f"{container.where}[{index}]", "run")
        assert config.shard == f"auto/{count}", f"{where}: --shard {config.shard}"
        assert parse_shard(config.shard, launch.env) == Shard(index, count)
        check_credentials(container, launch, needs=True)
        check_writes(container, config)
        check_grace(container, config)
        mount, at = container.mount_of(config.reports_dir)
        dirs.append((mount.source, at))
        rates.append(config.rate)
        inputs.add(config.inputs)
    assert len(set(dirs)) == count, f"{where}: shards share a reports directory: {dirs}"
    assert len(inputs) == 1, f"{where}: the shards read different inventories"
    declared = float(job["metadata"]["annotations"]["vpc-members/service-rate"])
    assert sum(rates) <= declared, f"{where}: the shards' rates {rates} add up past {declared:g}"
    assert declared <= sync.rate, f"{where}: more than the nightly sync's --rate {sync.rate:g}"
    return dirs


def check_merge(
    docs: Sequence[Doc], image: Dockerfile, shards: Sequence[tuple[str, PurePosixPath]]
) -> Container:
    where = "job-merge.yaml"
    check_schema(docs, where)
    job = one(docs, "Job", where)
    assert isinstance(job_spec(job).get("backoffLimit"), int), f"{where}: backoffLimit"
    check_security(job, image, where)
    container = ours(docs, where)
    launch = container.launch(image)
    namespace, config = accepted(launch.argv, launch.env, container.where)
    assert namespace.command == "merge" and config is None, f"{where}: not a merge"
    runs = [container.mount_of(run) for run in namespace.runs]
    expected = [(source, at / "latest") for source, at in shards]
    assert [(mount.source, at) for mount, at in runs] == expected, (
        f"{where}: merges {namespace.runs}, not the shards' latest runs in order"
    )
    out_mount, out_at = container.mount_of(namespace.out)
    assert out_mount.writable and out_at.parts, f"{where}: --out {namespace.out}"
    # merge refuses an --out that exists: each pod must name a new one.
    again = container.launch(image, pod_name=POD_NAME + "-retry")
    assert again.argv != launch.argv, f"{where}: --out is the same for every pod"
    check_credentials(container, launch, needs=False)
    return container


# -- systemd and cron ----------------------------------------------------------------------------


Unit = dict[str, list[tuple[str, str]]]


def read_unit(text: str) -> Unit:
    sections: Unit = {}
    current, pending = "", ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole, pending = pending + stripped, ""
        if whole.startswith("["):
            current = whole.strip("[]")
            sections.setdefault(current, [])
            continue
        key, equals, value = whole.partition("=")
        assert equals and current, f"not a setting: {whole!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def setting(unit: Unit, section: str, key: str) -> str | None:
    values = [value for name, value in unit.get(section, []) if name == key]
    return values[-1] if values else None


def settings(unit: Unit, section: str, key: str) -> list[str]:
    found: list[str] = []
    for name, value in unit.get(section, []):
        if name == key:
            found = [*found, *value.split()] if value else []  # an empty value resets a list
    return found


_SPANS = {"us": 1e-6, "ms": 1e-3, "": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def seconds(span: str) -> float:
    """A systemd time span: ``90``, ``90s``, ``1min 30s``, ``4h``, ``infinity``."""
    if span.strip() == "infinity":
        return math.inf
    parts = re.findall(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == re.sub(r"\s", "", span), span
    return sum(float(number) * _SPANS[unit] for number, unit in parts)


def exec_start(unit: Unit, env: Mapping[str, str]) -> list[str]:
    lines = [value for name, value in unit.get("Service", []) if name == "ExecStart"]
    assert len(lines) == 1, f"{len(lines)} ExecStart lines, expected one"
    (line,) = lines
    argv = shlex.split(line.lstrip("-@:+!"))
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), a) for a in argv]
    for arg in argv:
        assert "$" not in arg, f"ExecStart: {arg!r} names a variable the unit does not set"
    return argv


def check_systemd(service: str, timer: str) -> tuple[Config, Unit]:
    unit, schedule = read_unit(service), read_unit(timer)
    where = "vpc-members.service"
    assert setting(unit, "Service", "Type") == "oneshot", f"{where}: Type"
    user = setting(unit, "Service", "User")
    assert user and user not in ("root", "0"), f"{where}: User={user}"
    env_files = settings(unit, "Service", "EnvironmentFile")
    assert env_files, f"{where}: the credentials come from no EnvironmentFile"
    env = {}
    for name, value in unit["Service"]:
        if name == "Environment":
            for word in shlex.split(value):
                key, _, val = word.partition("=")
                assert not CREDENTIAL_NAME.search(key), f"{where}: {key} in the unit itself"
                env[key] = val
    env.update(SECRETS)  # what the EnvironmentFile holds
    argv = exec_start(unit, env)
    config = _config(argv, env, where, "sync")
    check_sync_config(config, where)
    assert config.metrics_file is not None
    for arg in argv:
        assert not any(value in arg for value in SECRETS.values()), f"{where}: a secret in argv"
    # 4: every valid row landed; only the inventory's invalid rows did not.
    assert set(settings(unit, "Service", "SuccessExitStatus")) == {"4"}, f"{where}: exit 4"
    stop = setting(unit, "Service", "TimeoutStopSec") or "90s"
    assert seconds(stop) > config.drain_timeout, (
        f"{where}: TimeoutStopSec={stop} does not outlast --drain-timeout "
        f"{config.drain_timeout:g}: SIGKILL would cut the drain short"
    )
    start = setting(unit, "Service", "TimeoutStartSec")
    assert start is not None and seconds(start) < math.inf, f"{where}: a hung sync runs forever"
    for key, wanted in (
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
    ):
        assert setting(unit, "Service", key) == wanted, f"{where}: {key}"
    assert setting(unit, "Service", "CapabilityBoundingSet") == "", f"{where}: capabilities"
    state = [
        PurePosixPath("/var/lib", name) for name in settings(unit, "Service", "StateDirectory")
    ]
    writable = [
        *(PurePosixPath(p.lstrip("-")) for p in settings(unit, "Service", "ReadWritePaths"))
    ]
    written = [config.lock_file or config.reports_dir / ".lock", config.metrics_file]
    written += [config.log_file] if config.log_file is not None else []
    for path in written:
        target = PurePosixPath(str(path))
        assert any(target.is_relative_to(p) for p in [*writable, *state]), (
            f"{where}: {target} is read-only under ProtectSystem=strict"
        )
    reports = PurePosixPath(str(config.reports_dir))
    if reports in state:
        mode = int(setting(unit, "Service", "StateDirectoryMode") or "0755", 8)
        assert not mode & 0o022, f"{where}: the CLI refuses a reports directory others can write"
    umask = setting(unit, "Service", "UMask")
    assert umask is None or not int(umask, 8) & 0o004, (
        f"{where}: UMask={umask} hides the metrics file from node_exporter"
    )
    for source in config.inputs:
        hidden = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")
        assert not any(PurePosixPath(source).is_relative_to(h) for h in hidden), (
            f"{where}: ProtectHome or PrivateTmp hides the inventory {source}"
        )
    when = "vpc-members.timer"
    assert setting(schedule, "Timer", "OnCalendar"), f"{when}: OnCalendar"
    assert setting(schedule, "Timer", "Persistent") == "true", f"{when}: Persistent"
    delay = setting(schedule, "Timer", "RandomizedDelaySec")
    assert delay and seconds(delay) > 0, f"{when}: RandomizedDelaySec"
    assert setting(schedule, "Timer", "Unit") in (None, "vpc-members.service"), f"{when}: Unit"
    assert "timers.target" in settings(schedule, "Install", "WantedBy"), f"{when}: WantedBy"
    return config, unit


def shell_commands(command: str) -> list[list[str]]:
    """The simple commands of an sh command line (words, redirections dropped)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    redirected = False
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        elif token in (">", ">>", "<"):
            redirected = True
        elif redirected:
            redirected = False
        else:
            assert not set(token) <= set("<>&|;()"), f"crontab: cannot read {token!r}"
            commands[-1].append(token)
    return [words for words in commands if words]


def check_crontab(text: str, systemd: Config, unit: Unit) -> Config:
    where = "vpc-members.crontab"
    env: dict[str, str] = {}
    jobs: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        assignment = re.fullmatch(r"([A-Za-z_]\w*)\s*=\s*(.*)", stripped)
        if assignment:
            assert not CREDENTIAL_NAME.search(assignment[1]), f"{where}: {assignment[1]}"
            env[assignment[1]] = assignment[2]
            continue
        fields = stripped.split(maxsplit=5)
        _cron_schedule(" ".join(fields[:5]), where)
        jobs.append(fields[5])
    assert len(jobs) == 1, f"{where}: {len(jobs)} jobs"
    (command,) = jobs
    assert "%" not in command, f"{where}: cron turns % into a line break"
    commands = shell_commands(command)
    runs = [words[1:] if words[0] == "exec" else words for words in commands]
    ours_ = [w for w in runs if PurePosixPath(w[0]).name == "vpc-members"]
    assert len(ours_) == 1, f"{where}: {len(ours_)} vpc-members commands"
    sourced = [w[1] for w in runs if w[0] in (".", "source")]
    assert sourced == settings(unit, "Service", "EnvironmentFile"), (
        f"{where}: reads {sourced}, not the systemd unit's EnvironmentFile"
    )
    for words in runs:
        assert words[0] not in ("flock", "sudo", "su"), f"{where}: {words[0]}"
        for word in words:
            name = word.split("=", 1)[0] if "=" in word and not word.startswith("-") else ""
            assert not CREDENTIAL_NAME.search(name), f"{where}: {name} on the command line"
    bin_dir = str(PurePosixPath(exec_start(unit, SECRETS)[0]).parent)
    assert bin_dir in env.get("PATH", "").split(":"), f"{where}: PATH lacks {bin_dir}"
    config = _config(ours_[0], SECRETS, where, "sync")
    check_sync_config(config, where)
    same = ("inputs", "region", "endpoint", "reports_dir", "metrics_file", "prune", "max_prune")
    for name in (*same, "rate"):
        assert getattr(config, name) == getattr(systemd, name), (
            f"{where}: {name} differs from the systemd unit's"
        )
    return config


# -- the files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    image: Dockerfile
    dockerignore: str
    cronjob: list[Doc]
    shards: list[Doc]
    merge: list[Doc]
    service: str
    timer: str
    crontab: str


def read_files() -> Files:
    return Files(
        Dockerfile.parse((ROOT / "Dockerfile").read_text(encoding="utf-8")),
        (ROOT / ".dockerignore").read_text(encoding="utf-8"),
        documents(KUBERNETES / "cronjob-sync.yaml"),
        documents(KUBERNETES / "indexed-job-shards.yaml"),
        documents(KUBERNETES / "job-merge.yaml"),
        (SYSTEMD / "vpc-members.service").read_text(encoding="utf-8"),
        (SYSTEMD / "vpc-members.timer").read_text(encoding="utf-8"),
        (DEPLOY / "cron" / "vpc-members.crontab").read_text(encoding="utf-8"),
    )


def check_all(files: Files) -> None:
    check_dockerfile(files.image, files.dockerignore)
    sync = check_cronjob(files.cronjob, files.image)
    shards = check_shards(files.shards, files.image, sync)
    check_merge(files.merge, files.image, shards)
    config, unit = check_systemd(files.service, files.timer)
    check_crontab(files.crontab, config, unit)


@pytest.fixture(scope="module")
def files() -> Files:
    return read_files()


# -- the tests -------------------------------------------------------------------------------------


def test_the_dockerfile_builds_a_non_root_image_with_reports_on_its_volume(files: Files) -> None:
    check_dockerfile(files.image, files.dockerignore)


def test_the_images_default_command_prints_the_help(files: Files) -> None:
    argv = [*files.image.exec_form("ENTRYPOINT"), *files.image.exec_form("CMD")]
    assert argv == ["vpc-members", "--help"]
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit) as exited:
        cli.parse(argv[1:], files.image.env)
    assert exited.value.code == 0 and shown.getvalue().startswith("usage: vpc-members")


def test_the_build_context_holds_what_the_image_needs_and_nothing_else(files: Files) -> None:
    patterns = _ignore_patterns(files.dockerignore)
    needed = ["pyproject.toml", "README.md", "deploy/constraints.txt"]
    needed += [
        str(path.relative_to(ROOT))
        for path in (ROOT / "worker").rglob("*.py")
        if "__pycache__" not in path.parts
    ]
    for path in needed:
        assert in_context(path, patterns), f"{path} is left out of the build context"
    for path in (
        ".venv/bin/python",
        ".git",
        ".git/HEAD",
        "reports/20261127T101500Z-3fa2c1/errors.csv",
        "reports/latest",
        "bench/work/inventory.csv",
        "bench/results.json",
        "tests/test_deploy.py",
        ".mypy_cache/3.11/worker/cli.meta.json",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/0.4.0/123",
        ".hypothesis/examples/x",
        ".coverage",
        "worker/__pycache__/cli.cpython-312.pyc",
        "vpc_members.egg-info/PKG-INFO",
        "build/lib/worker/cli.py",
        "deploy/kubernetes/cronjob-sync.yaml",
    ):
        assert not in_context(path, patterns), f"{path} would be sent to the builder"


def test_the_image_pins_every_runtime_dependency_within_pyproject(files: Files) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, equals, version = line.partition("==")
            assert equals, f"constraints.txt: {line!r} is not a pin"
            pins[canonicalize_name(name)] = version
    for text in project["dependencies"]:
        wanted = Requirement(text)
        pinned = pins.get(canonicalize_name(wanted.name))
        assert pinned is not None, f"constraints.txt does not pin {wanted.name}"
        assert wanted.specifier.contains(pinned), f"{wanted.name}=={pinned} is not {wanted}"


def test_the_kubernetes_manifests_match_the_api_schemas(files: Files) -> None:
    for name, docs in (
        ("cronjob-sync.yaml", files.cronjob),
        ("indexed-job-shards.yaml", files.shards),
        ("job-merge.yaml", files.merge),
    ):
        check_schema(docs, name)


def test_the_cronjob_syncs_nightly_with_prune_metrics_and_secrets_from_a_secret(
    files: Files,
) -> None:
    config = check_cronjob(files.cronjob, files.image)
    assert config.prune and config.max_prune == 20 and config.metrics_file is not None


def test_the_indexed_job_gives_each_shard_its_directory_and_a_share_of_the_rate(
    files: Files,
) -> None:
    sync = check_cronjob(files.cronjob, files.image)
    dirs = check_shards(files.shards, files.image, sync)
    assert [str(at) for _, at in dirs] == [f"shard-{index}" for index in range(4)]


def test_the_merge_job_merges_the_latest_run_of_every_shard(files: Files) -> None:
    sync = check_cronjob(files.cronjob, files.image)
    check_merge(files.merge, files.image, check_shards(files.shards, files.image, sync))


def test_the_systemd_unit_and_timer(files: Files) -> None:
    check_systemd(files.service, files.timer)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit_and_timer(files: Files, tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at one that does.
    program = exec_start(read_unit(files.service), SECRETS)[0]
    (tmp_path / "vpc-members.service").write_text(files.service.replace(program, "/bin/true"))
    (tmp_path / "vpc-members.timer").write_text(files.timer)
    done = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(tmp_path / "vpc-members.service"),
            str(tmp_path / "vpc-members.timer"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    # Unknown keys and bad values are only warnings, each naming the file and line.
    assert "vpc-members.service:" not in said and "vpc-members.timer:" not in said, said
    calendar = setting(read_unit(files.timer), "Timer", "OnCalendar")
    assert calendar is not None
    subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, check=True)


def test_the_crontab_runs_the_same_sync_as_the_systemd_unit(files: Files) -> None:
    config, unit = check_systemd(files.service, files.timer)
    check_crontab(files.crontab, config, unit)


@pytest.mark.parametrize("name", ["deploy/README.md", "README.md"])
def test_the_docs_show_command_lines_the_cli_accepts(files: Files, name: str) -> None:
    text = (DEPLOY.parent / name).read_text(encoding="utf-8")
    assert check_docs(text, name, files.image, files.crontab) >= 1

    def misspelled(text: str) -> str:
        return re.sub(r"(?<![\w-])--prune\b", "--prun", text)

    with pytest.raises(AssertionError, match="--prun is not a flag"):
        check_docs(misspelled(text), name, files.image, misspelled(files.crontab))
    if "15 2 * * *" in text:
        with pytest.raises(AssertionError, match="not in the crontab"):
            check_docs(text.replace("15 2 * * *", "15 3 * * *"), name, files.image, files.crontab)


def code_lines(markdown: str) -> list[str]:
    """The lines of a Markdown text's code blocks (indented or fenced), continuations joined."""
    lines, fenced, pending = [], False, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        lines.append(pending + line.strip())
        pending = ""
    return lines


def check_docs(markdown: str, where: str, image: Dockerfile, crontab: str) -> int:
    """Every vpc-members command line in the code blocks of ``markdown`` is one the CLI
    accepts, and a crontab line shown is the crontab's own; returns how many there were."""
    checked = 0
    for line in code_lines(markdown):
        fields = line.split(maxsplit=5)
        try:
            _cron_schedule(" ".join(fields[:5]), where)
        except AssertionError:
            pass
        else:
            assert line in crontab.splitlines(), f"{where}: a crontab line not in the crontab"
            line = fields[5]
        if line.startswith("- ") or ":" in line.split(" ", 1)[0]:
            continue  # YAML
        if "vpc-members" not in line.split("#", 1)[0]:
            continue  # not a command line of the tool (a diagram, make, kubectl)
        for words in shell_commands(line):
            words = words[1:] if words[0] == "exec" else words
            env: Mapping[str, str] = SECRETS
            if words[:2] == ["docker", "run"]:
                image_name = re.compile(r"(\S+/)?vpc-members:[\w.-]+")
                at = next(i for i, word in enumerate(words) if image_name.fullmatch(word))
                words, env = ["vpc-members", *words[at + 1 :]], {**image.env, **SECRETS}
            if words[0] == "vpc-members" and len(words) > 1:
                accepted(words, env, where)
                checked += 1
    return checked


# -- the checks catch what they are for ----------------------------------------------------------


def _replace_arg(docs: list[Doc], old: str, new: str | None) -> list[Doc]:
    """``docs`` with the first argument ``old`` of the vpc-members container replaced."""
    changed = copy.deepcopy(docs)
    args = ours(changed, "mutated").spec["args"]
    assert old in args, f"{old} is not an argument"
    at = args.index(old)
    args[at : at + 1] = [] if new is None else [new]
    return changed


def _edit(docs: list[Doc], kind: str, change: Callable[[Doc], None]) -> list[Doc]:
    changed = copy.deepcopy(docs)
    for doc in changed:
        if doc["kind"] == kind:
            change(doc)
    return changed


def _pod(doc: Doc) -> Doc:
    pod = pod_spec(doc)
    assert pod is not None
    return pod


def _first_container(doc: Doc) -> Doc:
    spec: Doc = _pod(doc)["containers"][0]
    return spec


def _set(path: Sequence[str], value: object) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _container_env(name: str, item: Doc) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        env = _first_container(doc)["env"]
        env[:] = [item if e["name"] == name else e for e in env]

    return change


Breakage = Callable[[Files], Files]


def _cronjob(change: Callable[[list[Doc]], list[Doc]]) -> Breakage:
    return lambda f: dataclasses.replace(f, cronjob=change(f.cronjob))


def _shards(change: Callable[[list[Doc]], list[Doc]]) -> Breakage:
    return lambda f: dataclasses.replace(f, shards=change(f.shards))


def _merge(change: Callable[[list[Doc]], list[Doc]]) -> Breakage:
    return lambda f: dataclasses.replace(f, merge=change(f.merge))


def _text(name: str, old: str, new: str) -> Breakage:
    def change(f: Files) -> Files:
        text = getattr(f, name)
        assert old in text, f"{old!r} is not in {name}"
        return dataclasses.replace(f, **{name: text.replace(old, new, 1)})

    return change


def _dockerfile(old: str, new: str) -> Breakage:
    def change(f: Files) -> Files:
        text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
        assert old in text, f"{old!r} is not in the Dockerfile"
        return dataclasses.replace(f, image=Dockerfile.parse(text.replace(old, new, 1)))

    return change


BREAKAGES: dict[str, Breakage] = {
    "a misspelled flag": _cronjob(lambda d: _replace_arg(d, "--max-prune", "--max-prnue")),
    "an abbreviated flag": _cronjob(lambda d: _replace_arg(d, "--max-prune", "--max-prun")),
    "a value out of range": _cronjob(lambda d: _replace_arg(d, "20", "200")),
    "an unknown command": _cronjob(lambda d: _replace_arg(d, "sync", "synk")),
    "no --prune": _cronjob(lambda d: _replace_arg(d, "--prune", None)),
    "a run instead of a sync": _cronjob(
        lambda d: _replace_arg(_replace_arg(d, "--prune", None), "sync", "run")
    ),
    "concurrent syncs": _cronjob(
        lambda d: _edit(d, "CronJob", _set(["spec", "concurrencyPolicy"], "Allow"))
    ),
    "a misspelled field": _cronjob(
        lambda d: _edit(d, "CronJob", _set(["spec", "concurrencyPolicyy"], "Forbid"))
    ),
    "a grace period shorter than the drain": _cronjob(
        lambda d: _edit(
            d, "CronJob", lambda c: _pod(c).__setitem__("terminationGracePeriodSeconds", 30)
        )
    ),
    "a secret as a literal": _cronjob(
        lambda d: _edit(
            d,
            "CronJob",
            _container_env("HUAWEICLOUD_SDK_SK", {"name": "HUAWEICLOUD_SDK_SK", "value": "x"}),
        )
    ),
    "a secret in args": _cronjob(
        lambda d: _edit(
            d,
            "CronJob",
            lambda c: _first_container(c)["args"].extend(
                ["--proxy", "http://u:$(HUAWEICLOUD_SDK_SK)@p:3128"]
            ),
        )
    ),
    "a root user": _cronjob(
        lambda d: _edit(d, "CronJob", lambda c: _pod(c)["securityContext"].update(runAsUser=0))
    ),
    "a writable root filesystem": _cronjob(
        lambda d: _edit(
            d,
            "CronJob",
            lambda c: _first_container(c)["securityContext"].update(readOnlyRootFilesystem=False),
        )
    ),
    "fsGroup applied at every mount": _cronjob(
        lambda d: _edit(
            d, "CronJob", lambda c: _pod(c)["securityContext"].pop("fsGroupChangePolicy")
        )
    ),
    "reports at the volume's root": _cronjob(
        lambda d: _replace_arg(d, "/var/lib/vpc-members/reports", "/var/lib/vpc-members")
    ),
    "metrics the exporter does not read": _cronjob(
        lambda d: _replace_arg(
            d, "/var/lib/vpc-members/vpc_members.prom", "/var/lib/vpc-members/reports/m.prom"
        )
    ),
    "metrics off the volumes": _cronjob(
        lambda d: _replace_arg(d, "/var/lib/vpc-members/vpc_members.prom", "/metrics.prom")
    ),
    "a bad shard": _shards(lambda d: _replace_arg(d, "auto/4", "auto/x")),
    "too few shards for the completions": _shards(lambda d: _replace_arg(d, "auto/4", "auto/3")),
    "shards over the rate limit": _shards(lambda d: _replace_arg(d, "5", "6")),
    "one reports directory for every shard": _shards(
        lambda d: _replace_arg(d, "/reports/shard-$(JOB_COMPLETION_INDEX)", "/reports/all")
    ),
    "an undefined variable": _shards(
        lambda d: _replace_arg(
            d, "/reports/shard-$(JOB_COMPLETION_INDEX)", "/reports/shard-$(JOB_INDEX)"
        )
    ),
    "not indexed": _shards(
        lambda d: _edit(d, "Job", _set(["spec", "completionMode"], "NonIndexed"))
    ),
    "a shard left out of the merge": _merge(
        lambda d: _replace_arg(d, "/reports/shard-3/latest", None)
    ),
    "merge into one fixed directory": _merge(
        lambda d: _replace_arg(d, "/reports/merged-$(POD_NAME)", "/reports/merged")
    ),
    "systemd: a stop timeout shorter than the drain": _text(
        "service", "TimeoutStopSec=90", "TimeoutStopSec=45"
    ),
    "systemd: exit 4 a failure": _text("service", "SuccessExitStatus=4", "SuccessExitStatus=3"),
    "systemd: a misspelled flag": _text("service", "--max-prune 20", "--max-prune20"),
    "systemd: a writable system": _text("service", "ProtectSystem=strict", "ProtectSystem=full"),
    "systemd: metrics it may not write": _text(
        "service", " /var/lib/prometheus/node-exporter\n", "\n"
    ),
    "systemd: a timer that forgets missed nights": _text(
        "timer", "Persistent=true", "Persistent=false"
    ),
    "cron: a misspelled flag": _text("crontab", "--reports-dir", "--report-dir"),
    "cron: another inventory than systemd's": _text(
        "crontab", "/srv/vpc-members/inventory.csv", "/srv/other.csv"
    ),
    "cron: a bad schedule": _text("crontab", "15 2 * * *", "15 25 * * *"),
    "cron: a secret inline": _text("crontab", "set -a &&", "HUAWEICLOUD_SDK_SK=x set -a &&"),
    "docker: runs as root": _dockerfile("USER 10001:10001", "USER root"),
    "docker: runs as uid 0": _dockerfile("USER 10001:10001", "USER 0:0"),
    "docker: pip may compile": _dockerfile(
        "pip install --no-deps --only-binary=:all:", "pip install --no-deps"
    ),
    "docker: a secret baked in": _dockerfile(
        "PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 HUAWEICLOUD_SDK_SK=x"
    ),
    "docker: reports off the volume": _dockerfile(
        "VPC_MEMBERS_REPORTS_DIR=/var/lib/vpc-members/reports", "VPC_MEMBERS_REPORTS_DIR=/reports"
    ),
}


def test_the_files_as_they_are_pass_every_check(files: Files) -> None:
    check_all(files)


@pytest.mark.parametrize("breakage", BREAKAGES, ids=list(BREAKAGES))
def test_the_checks_catch_a_broken_file(files: Files, breakage: str) -> None:
    broken = BREAKAGES[breakage](files)
    with pytest.raises(AssertionError):
        check_all(broken)


# -- rehearsals: the workloads' own command lines against the emulator ----------------------------


class Volumes:
    """Each volume a directory under ``root``, shared by every pod that mounts it, as a claim
    is; the paths a container names are mapped onto them."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, mount: Mount) -> Path:
        path = self.root / mount.source.replace("/", "-")
        if not path.exists():
            path.mkdir(parents=True)
            # As a claim's root is under fsGroup: group-writable, set-group-id.
            path.chmod(0o2775)
        return path

    def host(self, container: Container, text: str) -> str:
        if not text.startswith("/"):
            return text
        try:
            mount, at = container.mount_of(text)
        except AssertionError:
            return text
        return str(self.directory(mount) / at)

    def process(self, container: Container, launch: Launch) -> Launch:
        return Launch(
            [self.host(container, arg) for arg in launch.argv],
            {name: self.host(container, value) for name, value in launch.env.items()},
        )


def write_inventory(path: Path, channels: int, members: int) -> list[Channel]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["project_id,instance_id,vpc_channel_id,host,port,weight"]
    names = [Channel("proj0001", "inst0001", f"chan{c:04d}") for c in range(channels)]
    for number, channel in enumerate(names):
        for member in range(members):
            lines.append(f"{','.join(channel)},10.{number}.0.{member + 1},8080,1")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return names


async def execute(launch: Launch, url: str, config: Config) -> tuple[int, str]:
    """Run ``launch`` as the container would, its region pointed at ``url`` through the
    SDK's own override variable."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VPC_MEMBERS_", "HUAWEICLOUD_"))
    }
    env.update(launch.env)
    env["HOME"] = "/nonexistent"
    if config.region is not None:
        region = config.region.upper().replace("-", "_")
        env[f"HUAWEICLOUD_SDK_REGION_{config.api.value.upper()}_{region}"] = url
        assert region_endpoint(config.api.value, config.region, env) == url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *launch.argv[1:],
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def _emulator() -> EmulatorConfig:
    aksk = ((SECRETS["HUAWEICLOUD_SDK_AK"], SECRETS["HUAWEICLOUD_SDK_SK"]),)
    return EmulatorConfig(tokens=("nobody-uses-this",), aksk=aksk, auto_create=True)


async def test_the_cronjob_rehearsed_two_nights_running(files: Files, tmp_path: Path) -> None:
    container = ours(files.cronjob, "cronjob-sync.yaml")
    volumes = Volumes(tmp_path)
    launch = container.launch(files.image)
    config = _config(launch.argv, launch.env, container.where, "sync")
    (inventory,) = config.inputs
    channels = write_inventory(Path(volumes.host(container, inventory)), 8, 5)
    process = volumes.process(container, launch)
    async with Emulator(_emulator()) as emulator:
        for night in (1, 2):
            code, stderr = await execute(process, emulator.url, config)
            assert code == 0, f"night {night}: exit {code}\n{stderr}"
    reports = Path(volumes.host(container, str(config.reports_dir)))
    summary = orjson.loads((reports / "latest" / "summary.json").read_bytes())
    assert summary["actions"] == {"unchanged": 40}, summary["actions"]
    assert len([p for p in reports.iterdir() if p.is_dir() and not p.is_symlink()]) == 2
    # The exporter beside it finds the metrics file in its textfile directory.
    exporter = next(
        c for doc in files.cronjob for c in containers(doc, "cronjob-sync.yaml") if not c.ours
    )
    (directory,) = [
        arg.split("=", 1)[1]
        for arg in exporter.spec["args"]
        if arg.startswith("--collector.textfile.directory=")
    ]
    (served,) = Path(volumes.host(exporter, directory)).glob("*.prom")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(served.read_text(encoding="utf-8"))
        for sample in family.samples
    }
    assert samples[("vpc_members_exit_code", (("command", "sync"),))] == 0
    assert samples[("vpc_members_rows", (("outcome", "succeeded"),))] == 8 * 5
    assert ("vpc_members_last_success_timestamp_seconds", (("command", "sync"),)) in samples
    assert len(channels) == 8


async def test_the_shards_and_their_merge_rehearsed(files: Files, tmp_path: Path) -> None:
    shards = ours(files.shards, "indexed-job-shards.yaml")
    merge = ours(files.merge, "job-merge.yaml")
    count = job_spec(one(files.shards, "Job", "indexed-job-shards.yaml"))["completions"]
    volumes = Volumes(tmp_path)
    launches = [shards.launch(files.image, index) for index in range(count)]
    configs = [_config(la.argv, la.env, shards.where, "run") for la in launches]
    (inventory,) = configs[0].inputs
    channels = write_inventory(Path(volumes.host(shards, inventory)), 16, 3)
    # Every shard gets channels of its own, or it would have nothing to do.
    assert {shard_of(channel, count) for channel in channels} == set(range(count))
    async with Emulator(_emulator()) as emulator:
        done = await asyncio.gather(
            *(
                execute(volumes.process(shards, launch), emulator.url, config)
                for launch, config in zip(launches, configs, strict=True)
            )
        )
        for index, (code, stderr) in enumerate(done):
            assert code == 0, f"shard {index}: exit {code}\n{stderr}"
        joined = volumes.process(merge, merge.launch(files.image))
        code, stderr = await execute(joined, emulator.url, configs[0])
        assert code == 0, f"merge: exit {code}\n{stderr}"
    out = Path(joined.argv[joined.argv.index("--out") + 1])
    assert out.name == f"merged-{POD_NAME}"
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["rows"]["total"] == summary["rows"]["succeeded"] == 16 * 3
    shards = summary["requests"]["shards"]
    assert [s["shard"] for s in shards] == [f"{i}/4" for i in range(4)]
    # Each shard's run itself, not the `latest` link the Job names, which moves on.
    for shard in shards:
        run_dir = Path(shard["run_dir"])
        assert run_dir.name == shard["run_id"] and not run_dir.is_symlink()
