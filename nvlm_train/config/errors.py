"""Configuration errors: raised before any heavy work, with a message saying what to change."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the fix."""
