"""Configuration: the file's shape as pydantic models (`schema`), the typed config built from it (`settings`), its
routing and rate-limit sections, and `ConfigError`.

`schema` checks every key; each section module turns its checked part into the values the code reads and checks
what a schema cannot say. Nothing here imports anything above the shared layer.
"""
