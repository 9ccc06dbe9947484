"""The API surface: the gRPC servicer and server, API-key authentication and WebSocket-style sessions.

Owns how a gRPC call enters and leaves the service (status codes, trailers, ownership of stored responses).
May import `pipeline`, `routing`, `store` and the shared layer. Must never import `switchboard.edge` or
`switchboard.cli`, and nothing below it imports it.
"""
