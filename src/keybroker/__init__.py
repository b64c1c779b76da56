"""keybroker: a secret and API-key manager for AI agents."""

from keybroker.errors import KeybrokerError

__version__ = "0.1.0"

__all__ = ["KeybrokerError", "__version__"]
