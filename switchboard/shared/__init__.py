"""The shared layer, used by both faces (the service and the edge) and the command line.

Owns the configuration types and their parsing (`config`), the one error table and gRPC status mapping
(`errors`), telemetry and metrics setup, secret sealing (`crypto`) and process limits (`process`).
Must never import `switchboard.service`, `switchboard.edge` or `switchboard.cli`.
"""
