"""The estimator is released on its own: its image's install steps, run in a fresh virtualenv.

No Docker engine runs here, so this follows the build stage of ``services/estimator/Dockerfile``
step by step in a clean environment holding nothing but the estimator's build context: stubs
generated from protos/, ``autopack-common`` and ``autopack-estimator`` installed against the
workspace lock, the code generator removed. The result must serve Estimate as a real process and
must not contain any other service's packages or heavy dependencies.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
from autopack.estimator.v1 import estimator_pb2, estimator_pb2_grpc
from autopack_common.clients import NotServing, wait_until_serving

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "services" / "estimator" / "Dockerfile"
# The build context the Dockerfile copies (everything else in the repository stays out).
CONTEXT = [
    "requirements.lock",
    "protos",
    "scripts/gen-protos.sh",
    "services/common/pyproject.toml",
    "services/common/autopack_common",
    "services/estimator/pyproject.toml",
    "services/estimator/autopack_estimator",
]
# The build stage's commands, as the Dockerfile runs them (from the context's root).
DOCKERFILE_COMMANDS = [
    "pip install -c requirements.lock grpcio-tools",
    "bash scripts/gen-protos.sh python services/common",
    "pip install -c requirements.lock ./services/common ./services/estimator",
    "pip uninstall -y grpcio-tools",
]
NOT_IN_THE_IMAGE = ["torch", "qdrant-client", "anthropic", "openai", "autopack-builder", "autopack-memory"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_dockerfile_runs_the_steps_this_test_follows() -> None:
    text = " ".join(DOCKERFILE.read_text().split())
    for command in DOCKERFILE_COMMANDS:
        assert command in text, f"the Dockerfile no longer runs: {command}"
    for path in CONTEXT:
        assert f"COPY {path}" in text, f"the Dockerfile no longer copies {path}"


def test_the_estimator_installs_alone_and_serves(tmp_path: Path) -> None:
    context = tmp_path / "src"
    for path in CONTEXT:
        source, target = REPO / path, context / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    for command in DOCKERFILE_COMMANDS:
        done = subprocess.run(
            command.split(), cwd=context, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"

    installed = subprocess.run(
        ["pip", "list", "--format=freeze"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.lower()
    names = {line.split("==")[0] for line in installed.splitlines()}
    assert {"autopack-common", "autopack-estimator", "orjson"} <= names
    assert not names & set(NOT_IN_THE_IMAGE), names & set(NOT_IN_THE_IMAGE)
    assert "grpcio-tools" not in names

    address = f"127.0.0.1:{_free_port()}"
    run_env = {
        **env,
        "AUTOPACK_ESTIMATOR_ADDR": address,
        "AUTOPACK_DATA_DIR": str(tmp_path / "data"),
        "AUTOPACK_TRACE_DIR": str(tmp_path / "traces"),
    }
    run_env.pop("DATABASE_URL", None)  # the image's default: an embedded SQLite file in the data dir
    run_env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen(
        ["python", "-m", "autopack_estimator"],
        cwd=tmp_path,  # not the checkout: nothing may be imported from it
        env=run_env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            wait_until_serving(address, timeout=60, alive=lambda: process.poll() is None)
        except NotServing as error:
            raise AssertionError(process.stderr.read() if process.stderr else "") from error
        with grpc.insecure_channel(address) as channel:
            response = estimator_pb2_grpc.EstimatorServiceStub(channel).Estimate(
                estimator_pb2.EstimateRequest(
                    phase_id="p1", description="Add a retry helper", deliverables=["src/app/retry.py"]
                ),
                timeout=10,
            )
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert response.estimate_id.startswith("est_")
    assert response.model_version == "default-1"
    assert response.category == "implementation"
    assert response.selected_budget >= response.predicted_output_tokens > 0
    assert list((tmp_path / "data").glob("*.db")), "the embedded database was not created in the data dir"
