"""pyresa: GGUF language models from Python, with Rectified Sparse Attention."""

from pyresa.errors import (  # noqa: F401
    ContextFullError,
    DeviceMemoryError,
    InvalidRequestError,
    ModelFormatError,
    ModelNotFoundError,
    PyresaError,
    TokenizerUnavailableError,
    UnsupportedError,
)

__version__ = "0.1.0"
