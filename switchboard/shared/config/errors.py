"""`ConfigError`: a bad configuration value, with the key path and what is wrong in its message."""


class ConfigError(ValueError):
    pass
