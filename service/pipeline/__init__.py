"""The turn pipeline: a request becomes a turn and a turn becomes events.

Owns request resolution (`requests`), validation, plugins, the one turn engine (`engine`, `engine_mcp`: the only
place ids, indexes, sequence numbers and event order are assigned), the turn runner (`turns`), stream batching,
background jobs and per-generation tracing. May import `routing`, `providers`, `mcp`, `store` and the shared layer.
Must never import `api`, `switchboard.edge` or `switchboard.cli`.
"""
