"""User-facing errors. The CLI prints these as one clear message, without a traceback."""


class RlftError(Exception):
    """An error caused by the user's input (config, data, paths), with a message saying what to do."""


class ConfigError(RlftError):
    """A pipeline or stage config is invalid. The message names the key path."""


class DataError(RlftError):
    """A data source is invalid. The message names the file, the row and the field."""


class RewardError(RlftError, ValueError):
    """A reward gave what training cannot use (too few or too many scores, NaN): the message says what."""
