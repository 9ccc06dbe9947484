"""llama.cpp is built for a fixed CPU baseline, never for the building machine (decision 13).

A wheel built for the builder's CPU crashes on another (and, with ggml's AMX path, on Intel CPUs with AMX): every
place that installs llama.cpp must use the same portable flags, and the installed build must carry no feature the
baseline excludes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALLERS = [ROOT / "scripts" / "venv.sh", ROOT / "deploy" / "Dockerfile"]


def flags(path: Path, arch: str) -> list[str]:
    """The cmake flags the file gives for one architecture pattern of its `case`."""
    match = re.search(rf"{arch}[^)]*\)\s*\w+=\"([^\"]*)\"", path.read_text())
    assert match, f"{path.name} has no llama.cpp flags for {arch}"
    return match.group(1).split()


def test_every_installer_builds_the_same_portable_baseline() -> None:
    for arch in ("x86_64", "aarch64"):
        script, image = (flags(path, arch) for path in INSTALLERS)
        assert script == image
        assert "-DGGML_NATIVE=OFF" in script
    x86 = flags(INSTALLERS[0], "x86_64")
    assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AMX_INT8=OFF", "-DGGML_AVX512=OFF"} <= set(x86)


def test_no_installer_targets_the_building_cpu() -> None:
    for path in [*INSTALLERS, ROOT / "scripts" / "run.sh", ROOT / "scripts" / "test.sh", ROOT / "pyproject.toml"]:
        text = path.read_text()
        assert "GGML_NATIVE=ON" not in text and "march=native" not in text, path


def test_the_installed_build_has_only_baseline_features() -> None:
    """Reads the library's own report in a child process (this one never loads llama.cpp)."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    features = dict(re.findall(r"(\w+) = (\d)", out))
    if features.get("AVX2") is None:  # not x86: nothing more to check here
        return
    assert features["AVX2"] == "1" and features["FMA"] == "1"
    assert not [name for name, on in features.items() if on == "1" and (name.startswith(("AVX512", "AMX")))], out
