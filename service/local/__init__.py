"""The embedded local models: each GGUF file runs in its own worker process (:mod:`switchboard.service.local.worker`),
supervised by the service (:mod:`switchboard.service.local.supervisor`) and reached over a Unix socket with the OpenAI
Chat Completions API. A native crash in llama.cpp then costs one model's requests, never the gateway."""
