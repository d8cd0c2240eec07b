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

from pyresa.generation import Chunk, GenerationStats  # noqa: E402,F401
from pyresa.model import Model  # noqa: E402,F401
from pyresa.resa import ResaConfig  # noqa: E402,F401
