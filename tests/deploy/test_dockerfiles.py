"""Each service's Dockerfile builds what deploy/ runs: stubs from protos/, pinned Python, non-root, exec CMD.

The Dockerfiles are parsed here (no Docker engine needed). A missing Dockerfile fails
with a message naming the service.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from autopack_common.settings import DEFAULT_ADDRESSES, SERVICE_NAMES

REPO = Path(__file__).resolve().parents[2]
PINNED_TAG = re.compile(r"^\d+\.\d+\.\d+")  # python:3.11.9-slim-bookworm, not python:3.11 or :latest
PYTHON_EXECUTABLE = re.compile(r"^(.*/)?python(3(\.\d+)?)?$")
INIT_PROCESSES = {"tini", "dumb-init", "/usr/bin/tini", "/sbin/tini", "/usr/bin/dumb-init", "--"}
ROOT_USERS = {"root", "0"}


@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuations joined, heredocs kept inline."""
    lines = text.splitlines()
    instructions: list[tuple[str, str]] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and index < len(lines):
            following = lines[index].strip()
            index += 1
            if not following or following.startswith("#"):
                continue  # comments and blank lines inside a continuation are skipped
            line = line[:-1] + " " + following
        for marker in re.findall(r"<<-?['\"]?(\w+)['\"]?", line):
            body = []
            while index < len(lines) and lines[index].strip() != marker:
                body.append(lines[index])
                index += 1
            index += 1
            line = line + "\n" + "\n".join(body)
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _substitute(value: str, args: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        return args.get(name) or (default or "")

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", replace, value)


def parse_stages(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, arguments in parse_instructions(text):
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--platform")]
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=_substitute(words[0], global_args), alias=alias))
        elif not stages:
            if keyword == "ARG":
                name, _, default = arguments.partition("=")
                global_args[name.strip()] = default.strip().strip("\"'")
        else:
            stages[-1].instructions.append((keyword, arguments))
    return stages


def _lineage(stages: list[Stage], stage: Stage) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    by_alias = {s.alias: s for s in stages if s.alias}
    chain = [stage]
    while chain[-1].base in by_alias and by_alias[chain[-1].base] not in chain:
        chain.append(by_alias[chain[-1].base])
    return chain


def _last(chain: list[Stage], keyword: str) -> str | None:
    for stage in chain:
        values = [arguments for k, arguments in stage.instructions if k == keyword]
        if values:
            return values[-1]
    return None


def _image_name_and_tag(reference: str) -> tuple[str, str | None, str | None]:
    digest = None
    if "@" in reference:
        reference, digest = reference.split("@", 1)
    name, tag = reference, None
    if ":" in reference.rsplit("/", 1)[-1]:
        name, tag = reference.rsplit(":", 1)
    return name, tag, digest


def check_base_image(stages: list[Stage]) -> list[str]:
    """Every external base is pinned; Python to a patch version or digest; the final image is Python."""
    problems = []
    aliases = {s.alias for s in stages if s.alias}
    for stage in stages:
        if stage.base in aliases or stage.base == "scratch":
            continue
        name, tag, digest = _image_name_and_tag(stage.base)
        if name.rsplit("/", 1)[-1] == "python":
            if not (digest or (tag and PINNED_TAG.match(tag))):
                problems.append(
                    f"FROM {stage.base} is not pinned to a patch version (python:3.11.9-slim) or digest"
                )
        elif not (digest or (tag and tag != "latest")):
            problems.append(f"FROM {stage.base} is not pinned")
    root = _lineage(stages, stages[-1])[-1]
    if _image_name_and_tag(root.base)[0].rsplit("/", 1)[-1] != "python":
        problems.append(f"the final image is not built on the python image ({root.base})")
    return problems


def _copy_sources(arguments: str) -> list[str]:
    """The source paths of a COPY/ADD (shell or JSON form), flags and the destination dropped."""
    words = [w for w in shlex.split(arguments) if not w.startswith("--")]
    if words and words[0].startswith("["):
        words = json.loads(" ".join(w for w in arguments.split() if not w.startswith("--")))
    return words[:-1]


def check_generates_stubs(stages: list[Stage]) -> list[str]:
    """Stubs are generated, never committed (DESIGN "Contracts"): the build runs protoc on protos/."""
    problems = []
    instructions = [pair for stage in stages for pair in stage.instructions]
    copied = [
        source
        for keyword, arguments in instructions
        if keyword in ("COPY", "ADD")
        for source in _copy_sources(arguments)
    ]
    # protos/ itself, or the whole build context (the repository root).
    if not any(re.match(r"^(\./?|/?)$|^\.?/?protos(/|$)", source) for source in copied):
        problems.append("protos/ is never copied into the build")
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    generators = ("make protos", "scripts/gen-protos.sh")
    if not any(
        any(generator in run for generator in generators) or ("grpc_tools.protoc" in run and "protos" in run)
        for run in runs
    ):
        problems.append("no RUN generates the stubs from protos/ (scripts/gen-protos.sh or make protos)")
    return problems


def check_user(stages: list[Stage]) -> list[str]:
    user = _last(_lineage(stages, stages[-1]), "USER")
    if not user:
        return ["the final image has no USER, so it runs as root"]
    if user.split(":", 1)[0].strip() in ROOT_USERS:
        return [f"USER {user} is root"]
    return []


def image_uid(stages: list[Stage]) -> int | None:
    """The numeric uid of the final USER: given as a number, or from the useradd that created it."""
    chain = _lineage(stages, stages[-1])
    user = (_last(chain, "USER") or "").split(":", 1)[0].strip()
    if user.isdigit():
        return int(user)
    for stage in chain:
        for keyword, arguments in stage.instructions:
            if (
                keyword == "RUN"
                and "useradd" in arguments
                and re.search(rf"\b{re.escape(user)}\b", arguments)
            ):
                uid = re.search(r"(?:-u|--uid)[ =](\d+)", arguments)
                if uid:
                    return int(uid.group(1))
    return None


def check_uid_matches_pod(stages: list[Stage], service: str) -> list[str]:
    """deploy/ runs the pod as this uid: files the image prepares for its user must belong to it."""
    documents = yaml.safe_load_all((REPO / "deploy" / "base" / f"{service}.yaml").read_text(encoding="utf-8"))
    workload = next(d for d in documents if d and d["kind"] in ("Deployment", "StatefulSet"))
    pod_uid = workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    uid = image_uid(stages)
    if uid != pod_uid:
        return [f"the image's USER has uid {uid}, deploy/base/{service}.yaml runs the pod as uid {pod_uid}"]
    return []


def check_command(stages: list[Stage], service: str) -> list[str]:
    """python -m autopack_<svc> in exec form, so SIGTERM reaches Python (graceful shutdown)."""
    chain = _lineage(stages, stages[-1])
    argv: list[str] = []
    for keyword in ("ENTRYPOINT", "CMD"):
        arguments = _last(chain, keyword)
        if arguments is None:
            continue
        try:
            words = json.loads(arguments)
        except json.JSONDecodeError:
            return [
                f"{keyword} {arguments!r} is in shell form: /bin/sh becomes PID 1 and SIGTERM never "
                'reaches Python, so the graceful shutdown never runs; use the exec form ["python", ...]'
            ]
        argv += words
    expected = f"python -m autopack_{service}"
    if len(argv) < 3:
        return [f"the image runs {argv}, not {expected}"]
    *prefix, executable, flag, module = argv
    if not PYTHON_EXECUTABLE.match(executable) or (flag, module) != ("-m", f"autopack_{service}"):
        return [f"the image runs {argv}, not {expected}"]
    if not set(prefix) <= INIT_PROCESSES:
        return [f"unexpected wrapper {prefix} before python"]
    return []


def check_exposed_port(stages: list[Stage], service: str) -> list[str]:
    exposed = [
        word.split("/", 1)[0]
        for keyword, arguments in stages[-1].instructions
        if keyword == "EXPOSE"
        for word in arguments.split()
    ]
    port = DEFAULT_ADDRESSES[service].rsplit(":", 1)[1]
    return [f"EXPOSE {exposed}, but the service listens on {port}"] if exposed and port not in exposed else []


def _dockerfile(service: str) -> Path:
    return REPO / "services" / service / "Dockerfile"


def _stages_or_skip(service: str) -> list[Stage]:
    path = _dockerfile(service)
    if not path.is_file():
        pytest.skip(f"services/{service}/Dockerfile is missing (reported by test_dockerfile_exists)")
    stages = parse_stages(path.read_text(encoding="utf-8"))
    assert stages, f"{path}: no FROM"
    return stages


def _assert_no_problems(service: str, problems: list[str]) -> None:
    if problems:
        pytest.fail(f"services/{service}/Dockerfile: " + "; ".join(dict.fromkeys(problems)), pytrace=False)


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_dockerfile_exists(service: str) -> None:
    if not _dockerfile(service).is_file():
        pytest.fail(
            f"services/{service}/Dockerfile does not exist: the autopack-{service} image that "
            f"deploy/base/{service}.yaml runs cannot be built",
            pytrace=False,
        )


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_dockerfile_uses_a_pinned_python_base(service: str) -> None:
    _assert_no_problems(service, check_base_image(_stages_or_skip(service)))


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_dockerfile_generates_the_stubs_from_protos(service: str) -> None:
    _assert_no_problems(service, check_generates_stubs(_stages_or_skip(service)))


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_dockerfile_runs_as_a_non_root_user(service: str) -> None:
    _assert_no_problems(service, check_user(_stages_or_skip(service)))


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_dockerfile_user_is_the_uid_deploy_runs_the_pod_as(service: str) -> None:
    _assert_no_problems(service, check_uid_matches_pod(_stages_or_skip(service), service))


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_dockerfile_starts_the_service_module(service: str) -> None:
    _assert_no_problems(service, check_command(_stages_or_skip(service), service))


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_dockerfile_exposes_the_service_port_if_it_exposes_any(service: str) -> None:
    _assert_no_problems(service, check_exposed_port(_stages_or_skip(service), service))


# --------------------------------------------------------------------------- the parser itself

_SAMPLE = """\
# syntax=docker/dockerfile:1
ARG PYTHON_VERSION=3.11.9
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY protos/ protos/
COPY services/common services/common
RUN pip install grpcio-tools==1.85.1 \\
    # a comment inside a continuation
    && python -m grpc_tools.protoc -Iprotos --python_out=services/common \\
       $(find protos -name '*.proto')

FROM build AS runtime
RUN <<EOF
useradd --uid 1000 app
EOF
USER 1000:1000
EXPOSE 50052
CMD ["python", "-m", "autopack_estimator"]
"""


def test_parser_reads_stages_args_continuations_and_heredocs() -> None:
    stages = parse_stages(_SAMPLE)
    assert [(s.base, s.alias) for s in stages] == [
        ("python:3.11.9-slim-bookworm", "build"),
        ("build", "runtime"),
    ]
    runs = [a for k, a in stages[0].instructions if k == "RUN"]
    assert len(runs) == 1 and "grpc_tools.protoc -Iprotos" in runs[0] and "comment" not in runs[0]
    assert [k for k, _ in stages[1].instructions] == ["RUN", "USER", "EXPOSE", "CMD"]
    assert "useradd --uid 1000 app" in stages[1].instructions[0][1]


def test_checks_accept_a_good_dockerfile() -> None:
    stages = parse_stages(_SAMPLE)
    assert image_uid(stages) == 1000
    assert image_uid(parse_stages(_SAMPLE.replace("USER 1000:1000", "USER app"))) == 1000
    assert check_base_image(stages) == []
    assert check_generates_stubs(stages) == []
    assert check_user(stages) == []
    assert check_command(stages, "estimator") == []
    assert check_exposed_port(stages, "estimator") == []


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (("ARG PYTHON_VERSION=3.11.9", "ARG PYTHON_VERSION=3.11"), check_base_image),
        (("python:${PYTHON_VERSION}-slim-bookworm", "python"), check_base_image),
        (("python:${PYTHON_VERSION}-slim-bookworm", "debian:latest"), check_base_image),
        (("COPY protos/ protos/\n", ""), check_generates_stubs),
        (("python -m grpc_tools.protoc", "echo"), check_generates_stubs),
        (("COPY protos/ protos/", 'COPY ["services/", "/src/"]'), check_generates_stubs),
        (("USER 1000:1000", "USER root"), check_user),
        (("USER 1000:1000\n", ""), check_user),
        (('CMD ["python", "-m", "autopack_estimator"]', "CMD python -m autopack_estimator"), check_command),
        (('"autopack_estimator"', '"autopack_builder"'), check_command),
        (
            (
                'CMD ["python", "-m", "autopack_estimator"]',
                'CMD ["sh", "-c", "python -m autopack_estimator"]',
            ),
            check_command,
        ),
        (("EXPOSE 50052", "EXPOSE 8080"), check_exposed_port),
    ],
)
def test_checks_reject_a_bad_dockerfile(change: tuple[str, str], check) -> None:  # type: ignore[no-untyped-def]
    old, new = change
    assert old in _SAMPLE
    stages = parse_stages(_SAMPLE.replace(old, new))
    arguments = (stages, "estimator") if check in (check_command, check_exposed_port) else (stages,)
    assert check(*arguments) != []
