"""kopf wiring: thin handlers that parse, call the core, and patch status."""
