"""The error the LightningModules raise for a recipe value they cannot take."""


class ConfigError(ValueError):
    """A recipe value that is the right type but not an accepted value (reported by the CLI)."""
