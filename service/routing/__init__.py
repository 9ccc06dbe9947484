"""Routing and limits: which upstream serves a model (fallbacks, circuit breakers) and per-key rate limits.

The configuration types live in `switchboard.shared.config`; this package owns the runtime. May import only the
shared layer. Must never import `api`, `pipeline`, `providers`, `store`, `switchboard.edge` or `switchboard.cli`.
"""
