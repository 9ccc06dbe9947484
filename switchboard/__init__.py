"""Switchboard, a Responses API gateway: `service` (gRPC), `edge` (HTTP/SSE), `shared` (what both use), `cli`
(the command line) and `responses` (generated from proto/). See docs/development.md."""
