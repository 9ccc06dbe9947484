"""Feedback on long work: `serve` shows progress while the embedded model is assembled and loaded, then a summary."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.stack import API_KEY, start_stack


def test_first_start_shows_model_progress_and_a_summary(tmp_path: Path, upstream: str) -> None:
    cache = tmp_path / "models"  # empty: this start assembles the GGUF
    providers = [{"name": "fake", "kind": "openai-chat", "base_url": f"{upstream}/v1"},
                 {"name": "local", "kind": "llama-cpp", "n_threads": 2, "cache_dir": str(cache)}]
    stack = start_stack(tmp_path / "stack", upstream, envoy=False, local_model=False,
                        extra={"providers": providers})
    # A first start that assembled the model still shuts down cleanly on SIGTERM (edge child included).
    assert stack.stop() == 0
    log = "".join(stack.process.output)
    assert "assembling the embedded model" in log and "(first start only)" in log
    assert f"{cache}" in log
    assert "assembling the embedded model" in log.split("done in")[0]
    assert "INFO loaded" in log and "gemma-3-270m-q4_k_m.gguf in" in log and "2 threads)" in log  # the worker
    assert (cache / "gemma-3-270m-q4_k_m.gguf").exists()
    summary = log[log.index("switchboard: listeners:"):log.index("switchboard: ready")]
    host, port = stack.grpc.split(":")
    assert f"gRPC service  {host}:{port}" in summary
    assert f"HTTP edge     {stack.http}" in summary
    assert f"playground    {stack.http}/playground/" in summary
    assert "fake (openai-chat): fake/echo" in summary
    assert "local (llama-cpp): local/smollm2-135m-instruct, local/gemma-3-270m" in summary
    assert "routed models: tiny-context" in summary
    assert f"store: SQLite {tmp_path / 'stack' / 'switchboard.db'}" in summary
    assert "auth: 1 API key (Bearer)" in summary
    assert API_KEY not in log
