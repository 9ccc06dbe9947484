"""The HTTP/SSE edge: Open Responses JSON and SSE in front of the gRPC service, via a descriptor-driven codec.

May import only the shared layer (`switchboard.shared`) and the generated schema (`switchboard.responses`).
Must never import `switchboard.service` or `switchboard.cli`.
"""
