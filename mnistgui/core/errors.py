"""Errors a user can cause. Each carries a message fit to show as it is, on one line."""


class MnistguiError(Exception):
    """Base of every error mnistgui reports to the user rather than as a crash."""


class DataError(MnistguiError):
    """A dataset file is missing, unreadable, or not what it claims to be."""


class DataNotFoundError(DataError):
    """No copy of the dataset was found anywhere mnistgui looks, and none could be downloaded."""


class ConfigError(MnistguiError, ValueError):
    """A configuration value is out of range or combines badly with another."""


class ModelFileError(MnistguiError):
    """A model file cannot be read: foreign, truncated, newer, or inconsistent."""


class TrainingDiverged(MnistguiError):
    """The cost became NaN or infinite; the model was rolled back to its last finished epoch."""
