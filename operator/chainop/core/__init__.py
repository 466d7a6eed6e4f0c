"""Pure decision logic: no Kubernetes, no HTTP, no clocks of its own."""
