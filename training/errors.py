"""Exceptions of the training package."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of the errors that training, evaluation and export raise."""


class DecoderConfigError(TrainingError, ValueError):
    """A decoder config is invalid: the message names the key, the value and what is expected."""


class DatasetError(TrainingError):
    """A gold dataset is missing, has an unexpected layout, or has no usable rows."""


class CheckpointError(TrainingError):
    """A checkpoint cannot be read or does not match the run that tries to resume from it."""
