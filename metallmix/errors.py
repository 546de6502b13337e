"""The exceptions metallmix raises for bad input. Every message says what to fix."""


class MetallmixError(Exception):
    """Root of metallmix's own errors."""


class ConfigError(MetallmixError, ValueError):
    """A configuration value is unknown, out of range or inconsistent."""


class DataError(MetallmixError, ValueError):
    """A dataset is missing, empty, corrupt or in the wrong format."""


class DatasetNotFoundError(DataError):
    """A dataset named by the caller does not exist: an unknown name, or its files are not on this machine
    (the Serve app answers it with 404)."""


class SchemaError(MetallmixError, ValueError):
    """A meta-dataset does not follow the schema (missing columns, NaNs, unknown version)."""


class WeightsUnavailableError(MetallmixError, FileNotFoundError):
    """Pretrained weights are not on disk and downloading was not allowed."""
