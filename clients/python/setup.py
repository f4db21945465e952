"""Builds the package with the gRPC stubs compiled from the repository's proto/ folder.

The stubs are generated at build time (never committed), into coalition_client/_pb, with
their imports rewritten to that package so that they cannot collide with another
"coalition" module.
"""

import pathlib
import re

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTOS = ["coalition/v1/submission.proto", "coalition/v1/query.proto", "coalition/v1/admin.proto"]


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        from grpc_tools import protoc
        import grpc_tools

        out = pathlib.Path(self.build_lib) / "coalition_client" / "_pb"
        out.mkdir(parents=True, exist_ok=True)
        include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
        for proto in PROTOS:
            if not (PROTO_ROOT / proto).exists():
                raise SystemExit(f"{PROTO_ROOT / proto} is missing: build from the repository")
        code = protoc.main(
            ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}",
             f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *PROTOS]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with {code}")
        for folder in [out, out / "coalition", out / "coalition" / "v1"]:
            (folder / "__init__.py").touch()
        for generated in (out / "coalition" / "v1").glob("*.py"):
            text = generated.read_text()
            text = re.sub(r"^from coalition\.v1 import", "from coalition_client._pb.coalition.v1 import",
                          text, flags=re.MULTILINE)
            generated.write_text(text)


setup(cmdclass={"build_py": BuildWithStubs})
