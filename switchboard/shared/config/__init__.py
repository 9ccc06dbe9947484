"""Configuration: the typed config file (`settings`), its routing and rate-limit sections, and `ConfigError`.

Each section owns its parsing and its errors; `settings` composes them. Nothing here imports anything above the
shared layer.
"""
