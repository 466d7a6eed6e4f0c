"""chainop: keeps LLM provider chains healthy and routes LLM work through them."""

__version__ = "0.1.0"
