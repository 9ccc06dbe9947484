"""Memory after a burst: the periodic trim gives freed pages back, and start-up objects leave the collector's way."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.e2e.stack import ROOT

PROGRAM = textwrap.dedent("""
    import asyncio
    from switchboard.shared import memory

    async def main():
        task = asyncio.create_task(memory.trim_periodically(interval=0.2))
        await asyncio.sleep(0.05)
        before = memory.resident_bytes()
        burst = [bytes(1000) + bytes(i % 7) for i in range(200_000)]  # ~200 MB of small blocks
        survivors = burst[::5000]  # a few survive, scattered over the heap
        peak = memory.resident_bytes()
        del burst
        await asyncio.sleep(2.0)
        after = memory.resident_bytes()
        task.cancel()
        print(before >> 20, peak >> 20, after >> 20, len(survivors))

    asyncio.run(main())
""")


def test_freed_memory_goes_back_to_the_system() -> None:
    # serve runs its Python children with PYTHONMALLOC=malloc (switchboard/cli/supervisor.py).
    result = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PYTHONMALLOC": "malloc", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    before, peak, after, _ = (int(x) for x in result.stdout.split())
    assert peak - before > 150, (before, peak, after)
    assert after - before < 30, f"RSS stayed high after the burst: {before} -> {peak} -> {after} MB"


def test_nothing_is_trimmed_without_growth() -> None:
    program = textwrap.dedent("""
        import asyncio, ctypes
        from switchboard.shared import memory
        calls = []
        real = memory.malloc_trim()
        memory.malloc_trim = lambda: (lambda: calls.append(1) or real())
        async def main():
            task = asyncio.create_task(memory.trim_periodically(interval=0.05))
            await asyncio.sleep(0.5)
            task.cancel()
            print(len(calls))
        asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]


def test_settling_freezes_what_startup_made() -> None:
    program = "import gc; from switchboard.shared.memory import settle_after_startup; " \
              "settle_after_startup(); print(gc.get_freeze_count() > 1000)"
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "True", result.stderr
