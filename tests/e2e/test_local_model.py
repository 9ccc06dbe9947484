"""The embedded model answers through the whole stack, offline, with no upstream API key."""

from __future__ import annotations

import openai

from tests.e2e.stack import API_KEY, Stack


def test_embedded_model_generates_through_envoy(stack: Stack) -> None:
    assert stack.envoy is not None
    with openai.OpenAI(base_url=f"{stack.envoy}/v1", api_key=API_KEY, max_retries=0, timeout=120) as sdk:
        response = sdk.responses.create(model="local/gemma-3-270m", input="The capital of France is",
                                        max_output_tokens=16)
        assert response.output_text.strip()
        assert response.usage is not None and 0 < response.usage.output_tokens <= 16
        assert response.model == "local/gemma-3-270m"
        events = list(sdk.responses.create(model="local/gemma-3-270m", input="Count: one, two,",
                                           max_output_tokens=16, stream=True))
        assert events[-1].type in ("response.completed", "response.incomplete")
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text.strip() and text == events[-1].response.output_text  # type: ignore[union-attr]


def test_media_input_to_the_embedded_model_is_a_clear_400(stack: Stack) -> None:
    import httpx

    reply = httpx.post(f"{stack.http}/v1/responses", headers={"authorization": f"Bearer {API_KEY}"}, timeout=30,
                       json={"model": "local/gemma-3-270m", "input": [{"role": "user", "content": [
                           {"type": "input_text", "text": "what is this?"},
                           {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "unsupported_input"
