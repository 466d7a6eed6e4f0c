"""The only layer that talks to the Kubernetes API (through the kubernetes client)."""
