"""Generate the Python code for proto/ into switchboard/ (``--check`` fails when the committed code is stale)."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
PACKAGE = "switchboard/responses/v1"
BIN = Path(sys.executable).parent


def generate(out: Path) -> None:
    files = sorted(str(p.relative_to(PROTO)) for p in (PROTO / PACKAGE).glob("*.proto"))
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}",
        f"--python_out={out}", f"--grpc_python_out={out}", f"--mypy_out={out}", f"--mypy_grpc_out={out}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        *files,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO, stdout=subprocess.DEVNULL)
    for init in (out / "switchboard", out / "switchboard/responses", out / PACKAGE):
        (init / "__init__.py").touch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the generated code is out of date")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh, current = out / PACKAGE, ROOT / PACKAGE
        if args.check:
            names = sorted(p.name for p in fresh.iterdir())
            have = sorted(p.name for p in current.iterdir() if p.is_file()) if current.exists() else []
            _, mismatch, errors = filecmp.cmpfiles(fresh, current, names, shallow=False)
            if names != have or mismatch or errors:
                print(f"generated code is stale: {mismatch + errors or 'file set differs'}; run scripts/genproto.py")
                return 1
            print("generated code is up to date")
            return 0
        if current.exists():
            shutil.rmtree(current)
        shutil.copytree(fresh, current)
        for init in ("switchboard/__init__.py", "switchboard/responses/__init__.py"):
            (ROOT / init).touch()
    print(f"generated {PACKAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
