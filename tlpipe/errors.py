"""Domain errors: one line for a person, raised by cores and printed by the CLI boundary."""


class PipelineError(Exception):
    """A problem with the user's input or environment that the user can fix."""


class ConfigError(PipelineError):
    """A wrong key, type or value in params."""


class DataError(PipelineError):
    """Bad or insufficient input data."""
