"""The gRPC service: the Responses API behind the edge, from the API surface down to the providers and the store.

Reads as the data flow: `api` (servicer, server, auth, sessions) -> `pipeline` (a request becomes a turn: requests,
validation, plugins, the turn engine and runner, background jobs) -> `routing` (which upstream, rate limits) ->
`providers` (one upstream protocol each) with `local` (embedded models in worker processes) and `mcp` (remote tool
servers) -> `store` (responses, items, jobs). Every part may use the shared layer (`switchboard.shared`).

Must never import: `switchboard.edge` or `switchboard.cli` (the command line composes the two faces, not the
other way round).
"""
