"""Errors pyresa raises. Every one is a :class:`PyresaError`, so apps can catch them all."""

from pyresa._core import (  # noqa: F401  (defined natively so C++ can raise them)
    ContextFullError,
    DeviceMemoryError,
    ModelFormatError,
    PyresaError,
    UnsupportedError,
)


class ModelNotFoundError(PyresaError, FileNotFoundError):
    """The model file does not exist or the default model could not be fetched."""


class TokenizerUnavailableError(PyresaError):
    """Text was given but no tokenizer (llama-cpp-python) is available."""


class InvalidRequestError(PyresaError, ValueError):
    """An argument is out of range or malformed (sampling settings, messages, ...)."""
