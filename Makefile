# chainop developer targets. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash
CACHE := $(shell hack/cache-dir.sh)
HELM := $(CACHE)/bin/helm

.PHONY: help install lint test unit cluster-build cluster-up cluster-down crds

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

cluster-build: ## build kube-apiserver, kube-controller-manager and helm into ~/.cache/chainop/bin (Go, no Docker)
	hack/cluster-build.sh

cluster-up: ## start the local control plane (etcd + apiserver + controller-manager); KUBECONFIG=.cluster/kubeconfig
	hack/cluster-up.sh

cluster-down: ## stop the local control plane, and a running node first (WIPE=1 also deletes .cluster/)
	WIPE=$(or $(WIPE),0) hack/cluster-down.sh

.PHONY: node-build node-up node-down node-status image
node-build: ## build kubelet + kube-scheduler (same Kubernetes module as the control plane) into the user cache
	hack/cluster-build.sh node

node-up: ## a real node: containerd + runc + bridge CNI + kubelet + kube-scheduler (root; starts the control plane)
	hack/node-up.sh

node-down: ## stop the node and restore the host (processes, mounts, network, cgroups, sysctls)
	WIPE=$(or $(WIPE),0) hack/node-down.sh

node-status: ## is the node live (Lease renewed) and Ready?
	hack/node-status.sh

image: ## build the Dockerfile with buildah (no engine) as localhost/chainop:dev; import it into a running node
	hack/image-build.sh

install: ## create .venv and install chainop with its dev dependencies
	hack/install.sh

lint: install ## ruff, mypy --strict, import-linter (and helm lint once the chart exists)
	hack/lint.sh

test: ## THE test command: install, lint, start the control plane, run all tests, stop it
	hack/test.sh

unit: install ## only the fast tests that need no control plane
	.venv/bin/pytest tests/unit

crds: install ## regenerate crds/ (and the chart's copy) from the pydantic models
	.venv/bin/python -m chainop.crds --write crds/
	cp crds/*.yaml charts/chainop/crds/
	.venv/bin/python -m chainop.refdocs --write docs/

.PHONY: demo
demo: ## the end-to-end demo on the local control plane (ARGS=--keep-cluster leaves it running)
	hack/install.sh
	hack/demo.sh $(ARGS)

.PHONY: chart-crds chart-lint chart-test
chart-crds: ## copy crds/ into charts/chainop/crds/ (the chart ships them byte-for-byte)
	cp crds/*.yaml charts/chainop/crds/

chart-lint: ## helm lint the chart (default, namespaced RBAC, two replicas)
	$(HELM) lint --strict charts/chainop
	$(HELM) lint --strict charts/chainop --set rbac.namespaced=true --set 'watchNamespaces={team-a}'
	$(HELM) lint --strict charts/chainop --set replicaCount=2

chart-test: ## the chart's unit tests and its install on the local control plane
	.venv/bin/pytest tests/unit/test_chart.py tests/e2e/test_helm_e2e.py

.PHONY: bench
bench: install ## benchmarks (issue 7 vs httpx and LiteLLM; issue 11 failure kinds; issue 13 on the node when one is up): writes docs/benchmarks.md (ARGS=--quick, ARGS="health node")
	.venv/bin/pip install --quiet -e '.[bench]'
	.venv/bin/python -m bench $(ARGS)

.PHONY: chaos
chaos: ## the chaos suite (tests/chaos: SIGKILLs, apiserver outage, flapping, peering, leaks); CHAINOP_CLUSTER_DIR=/tmp/x for a private control plane
	hack/install.sh
	hack/cluster-up.sh
	.venv/bin/pytest tests/chaos -s -p no:cacheprovider $(ARGS)

.PHONY: llama-build
llama-build: ## build llama.cpp's llama-server + SmolLM2-135M into ~/.cache/chainop/llama-<version>/ (~11 min once)
	hack/llama-build.sh
