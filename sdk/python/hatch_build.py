"""Build hook: generates the jobctl.v1 stubs from the .proto contract.

A wheel gets `jobctl/v1/*_pb2.py`, `*_pb2_grpc.py` and their typed `.pyi`
stubs (mypy-protobuf), generated with grpcio-tools at build time from

- `./proto/` when it exists: an sdist carries its copy there (this hook
  adds it to every sdist), so a wheel built from an sdist needs nothing
  outside it;
- otherwise `../../proto/`: the repository's contract, for builds from a
  checkout (`pip wheel sdk/python`, `python -m build sdk/python`).

Nothing generated is ever written into the source tree.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def proto_root(project: pathlib.Path) -> pathlib.Path:
    for candidate in (project / "proto", project.parent.parent / "proto"):
        if (candidate / "jobctl" / "v1").is_dir():
            return candidate
    raise RuntimeError(
        f"no jobctl .proto files: looked for proto/jobctl/v1 in {project} and {project.parent.parent}"
    )


def plugin(name: str) -> str:
    """The path of a protoc plugin installed beside this interpreter (the
    build environment's scripts directory), else on PATH."""
    here = pathlib.Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is missing: install mypy-protobuf in the build environment")
    return found


def generate(protos: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
    import grpc_tools

    sources = sorted(str(p.relative_to(protos)) for p in (protos / "jobctl" / "v1").glob("*.proto"))
    if not sources:
        raise RuntimeError(f"no .proto files in {protos / 'jobctl' / 'v1'}")
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{protos}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    subprocess.run(args, check=True)
    package = out / "jobctl" / "v1"
    (package / "__init__.py").write_text('"""Generated from proto/jobctl/v1 at build time."""\n')
    return sorted(p for p in package.iterdir() if p.is_file())


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        project = pathlib.Path(self.root)
        protos = proto_root(project)
        if self.target_name == "sdist":
            for proto in sorted((protos / "jobctl" / "v1").glob("*.proto")):
                build_data["force_include"][str(proto)] = f"proto/jobctl/v1/{proto.name}"
            return
        self._out = pathlib.Path(tempfile.mkdtemp(prefix="jobctl-stubs-"))
        for path in generate(protos, self._out):
            build_data["force_include"][str(path)] = f"jobctl/v1/{path.name}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        out = getattr(self, "_out", None)
        if out is not None and os.path.isdir(out):
            shutil.rmtree(out, ignore_errors=True)
