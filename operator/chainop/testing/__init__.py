"""Test and demo support: fake backends, the local control plane, the supervisor."""
