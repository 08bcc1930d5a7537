"""The package under test is the built wheel, installed: typed, with the
stubs generated from proto/ inside it."""

from __future__ import annotations

import importlib.metadata
import pathlib
import sys

import jobctl
from jobctl.v1 import job_pb2, job_service_pb2_grpc, worker_service_pb2

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "src"


def test_the_installed_wheel_is_what_is_tested() -> None:
    installed = pathlib.Path(jobctl.__file__).resolve().parent
    assert SOURCE not in installed.parents, f"testing the source tree ({installed}), not the wheel"
    assert pathlib.Path(sys.prefix) in installed.parents
    assert importlib.metadata.version("jobctl") == jobctl.__version__
    requires = importlib.metadata.requires("jobctl") or []
    assert any(r.startswith("grpcio") for r in requires)
    assert any("opentelemetry-api" in r and "extra" in r for r in requires)


def test_the_wheel_ships_typed_generated_stubs() -> None:
    package = pathlib.Path(jobctl.__file__).parent
    assert (package / "py.typed").exists()
    for module in ("job_pb2", "job_service_pb2", "job_service_pb2_grpc", "worker_service_pb2", "admin_service_pb2"):
        assert (package / "v1" / f"{module}.py").exists(), module
        assert (package / "v1" / f"{module}.pyi").exists(), module
    # Generated from the contract: its enums and services are all there.
    assert job_pb2.JobState.Name(job_pb2.JOB_STATE_CANCELLED) == "JOB_STATE_CANCELLED"
    assert {s.name for s in job_pb2.JobState.DESCRIPTOR.values} == {
        f"JOB_STATE_{s.name}" for s in jobctl.JobState
    }
    assert hasattr(job_service_pb2_grpc, "JobServiceStub")
    assert "CompleteBatchRequest" in worker_service_pb2.DESCRIPTOR.message_types_by_name
