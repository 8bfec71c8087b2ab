# CustomerLoop — the front door. `make help` lists the targets.

ENVTEST_K8S_VERSION    ?= 1.37.2
CONTROLLER_GEN_VERSION ?= v0.23.0
SETUP_ENVTEST_VERSION  ?= v0.25.1
HELM_VERSION           ?= v3.22.0
# Fuzzing budgets are execution counts: with a duration, Go 1.26's fuzz coordinator can
# report "context deadline exceeded" as a failure when the time is up (golang/go#75804).
FUZZTIME               ?= 50000x

LOCALBIN       ?= $(CURDIR)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_GEN_VERSION)
SETUP_ENVTEST  ?= $(LOCALBIN)/setup-envtest-$(SETUP_ENVTEST_VERSION)
HELM           ?= $(LOCALBIN)/helm-$(HELM_VERSION)
# What helm's release build stamps in: without it helm reports itself as v3.22 and
# renders for Kubernetes 1.20, older than the chart's kubeVersion. 1.37 is the
# Kubernetes minor of helm v3.22.0's client-go.
HELM_LDFLAGS   := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach p,pkg/chartutil pkg/lint/rules,-X helm.sh/helm/v3/$(p).k8sVersionMajor=1 -X helm.sh/helm/v3/$(p).k8sVersionMinor=37)

# Tools that take minutes to build are kept outside the repository, keyed by version (as
# hack/envtest.sh keeps kube-apiserver), so a clean checkout copies them instead.
TOOLS_CACHE ?= $${CUSTOMERLOOP_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/customerloop}/tools
# The cluster's own kubectl for deploy/undeploy; the one built for envtest otherwise.
KUBECTL ?= $(shell command -v kubectl 2>/dev/null || echo "$${CUSTOMERLOOP_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/customerloop}/envtest/k8s-$(ENVTEST_K8S_VERSION)/kubectl")

# The image docker-build builds and deploy runs.
IMG ?= customerloop:dev
CONTAINER_TOOL ?= docker
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

# Generated files that `make verify` checks are fresh.
GENERATED := api/v1alpha1/zz_generated.deepcopy.go config/crd/bases config/rbac/role.yaml \
	charts/customerloop/crds charts/customerloop/files/role.yaml

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

.PHONY: all
all: build

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRD and RBAC from the API types and markers.
	$(CONTROLLER_GEN) rbac:roleName=customerloop-manager crd paths="./api/...;./controllers/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	mkdir -p charts/customerloop/crds charts/customerloop/files
	cp config/crd/bases/*.yaml charts/customerloop/crds/
	cp config/rbac/role.yaml charts/customerloop/files/role.yaml

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate the DeepCopy methods.
	$(CONTROLLER_GEN) object paths="./api/..."

.PHONY: docs
docs: ## Generate docs/reference.md from the API types.
	go run ./hack/refdocs -api api/v1alpha1 -out docs/reference.md

.PHONY: fmt
fmt: ## Format the code.
	gofmt -w $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './bin/*')

.PHONY: vet
vet: ## go vet.
	go vet ./...

.PHONY: lint
lint: vet ## Check formatting and vet.
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted (run make fmt)"; exit 1; fi

.PHONY: verify
verify: $(CONTROLLER_GEN) ## Fail when generated files (CRD, RBAC, deepcopy, chart CRDs) or go.mod/go.sum are stale.
	hack/verify-generated.sh $(MAKE) --no-print-directory manifests generate -- $(GENERATED)
	hack/verify-generated.sh go mod tidy -- go.mod go.sum
	hack/verify-generated.sh $(MAKE) --no-print-directory docs -- docs/reference.md

##@ Local stack

.PHONY: clickhouse
clickhouse: ## Start (or reuse) the local ClickHouse server.
	hack/clickhouse.sh

.PHONY: clickhouse-stop
clickhouse-stop: ## Stop the local ClickHouse server.
	hack/clickhouse.sh stop

.PHONY: clickhouse-tls
clickhouse-tls: ## Start (or reuse) the local ClickHouse server with a secure native port (TLS tests).
	hack/clickhouse-tls.sh

.PHONY: clickhouse-tls-stop
clickhouse-tls-stop: ## Stop the local ClickHouse server with a secure native port.
	hack/clickhouse-tls.sh stop

.PHONY: cluster
cluster: ## Start (or reuse) the local three-node ClickHouse cluster with ZooKeeper.
	hack/clickhouse-cluster.sh

.PHONY: cluster-stop
cluster-stop: ## Stop the local ClickHouse cluster and its ZooKeeper.
	hack/clickhouse-cluster.sh stop

.PHONY: chdb
chdb: ## Provide ClickHouse 26.x as chdb's in-process library (downloaded once, then cached); prints its path.
	hack/chdb.sh

.PHONY: control-plane
control-plane: $(SETUP_ENVTEST) ## Provide etcd and kube-apiserver for envtest (built once, then cached).
	SETUP_ENVTEST=$(SETUP_ENVTEST) ENVTEST_K8S_VERSION=$(ENVTEST_K8S_VERSION) hack/envtest.sh

# Provisions the stack and exports its coordinates for the command that follows. The
# private server's "customerloop" user has a password, so the tests exercise credentials
# from a Secret; with CLICKHOUSE_ADDR given, set CLICKHOUSE_USER/CLICKHOUSE_PASSWORD too.
# The three-node cluster (same users) backs the tests of the cluster planners, and a
# server of its own with a secure native port (same users) the tests of TLS to ClickHouse.
TLS_ENV = \
	tls_addr=$$(hack/clickhouse-tls.sh); tls_certs=$$(hack/clickhouse-tls.sh certs); \
	export CLICKHOUSE_TLS_ADDR=$$tls_addr CLICKHOUSE_TLS_CERTS=$$tls_certs;
CLUSTER_ENV = \
	cluster_addrs=$$(hack/clickhouse-cluster.sh); \
	export CLICKHOUSE_CLUSTER=customerloop CLICKHOUSE_CLUSTER_ADDRS=$$cluster_addrs;
STACK = \
	if [ -z "$${CLICKHOUSE_ADDR:-}" ]; then \
		export CLICKHOUSE_USER=customerloop CLICKHOUSE_PASSWORD="$${CLICKHOUSE_DEV_PASSWORD:-customerloop-dev}"; \
	fi; \
	addr=$$(hack/clickhouse.sh); export CLICKHOUSE_ADDR=$$addr; \
	$(TLS_ENV) \
	$(CLUSTER_ENV) \
	assets=$$(SETUP_ENVTEST=$(SETUP_ENVTEST) ENVTEST_K8S_VERSION=$(ENVTEST_K8S_VERSION) hack/envtest.sh); \
	export KUBEBUILDER_ASSETS=$$assets;

# ClickHouse 26.x for test/modern, which runs the planners' SQL on it and on 18.16. The
# first run downloads ~178 MB from the npm registry; later runs use the cache.
CHDB_ENV = \
	chdb_lib=$$(hack/chdb.sh); export CHDB_LIB_PATH=$$chdb_lib;

##@ Build, test, run

.PHONY: build
build: ## Build bin/customerloop (and bin/kubectl-customerloop, the same binary, for kubectl) and bin/customerloop-dev.
	go build -o $(LOCALBIN)/customerloop ./cmd/customerloop
	go build -o $(LOCALBIN)/customerloop-dev ./cmd/customerloop-dev
	ln -sf customerloop $(LOCALBIN)/kubectl-customerloop
	printf '#!/bin/sh\n# Completion of "kubectl customerloop ..." (kubectl 1.26 and later run this).\nexec kubectl-customerloop __complete "$$@"\n' \
		> $(LOCALBIN)/kubectl_complete-customerloop
	chmod +x $(LOCALBIN)/kubectl_complete-customerloop

.PHONY: test
test: verify lint $(SETUP_ENVTEST) $(HELM) ## Provision the stack and run every test against it.
	$(STACK) $(CHDB_ENV) CUSTOMERLOOP_REQUIRE_STACK=1 HELM=$(HELM) go test -count=1 ./...
	for f in ingest:FuzzDecode ddl:FuzzDDLPlanners .:FuzzParseConsent; do \
		go test -run '^$$' -fuzz "^$${f#*:}\$$" -fuzztime $(FUZZTIME) ./pipeline/$${f%%:*} || exit 1; done
	$(STACK) CUSTOMERLOOP_REQUIRE_STACK=1 go test -race -count=1 -run '$(RACE_TESTS)' ./pipeline/ingest

# The tests of the worker's concurrent parts, which make test also runs under the race
# detector (a race there once let two workers in one process copy each other's strings).
RACE_TESTS = Fetcher|Worker|Rebalance|Concurrent|CleanStop|BatchDrops

.PHONY: race
race: $(SETUP_ENVTEST) $(HELM) ## Run every test of the pipeline and the commands under the race detector (slower).
	$(STACK) CUSTOMERLOOP_REQUIRE_STACK=1 HELM=$(HELM) go test -race -count=1 ./pipeline/... ./cmd/...

.PHONY: fuzz
fuzz: ## Fuzz the decoders and the DDL planners for longer (FUZZTIME=2000000x executions each, or a duration).
	go test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(if $(filter 50000x,$(FUZZTIME)),2000000x,$(FUZZTIME)) ./pipeline/ingest
	go test -run '^$$' -fuzz '^FuzzDDLPlanners$$' -fuzztime $(if $(filter 50000x,$(FUZZTIME)),2000000x,$(FUZZTIME)) ./pipeline/ddl
	go test -run '^$$' -fuzz '^FuzzParseConsent$$' -fuzztime $(if $(filter 50000x,$(FUZZTIME)),2000000x,$(FUZZTIME)) ./pipeline

.PHONY: demo
demo: build $(SETUP_ENVTEST) ## Run the whole loop on the local stack with a synthetic workload (ARGS=--keep-running to stay up).
	$(STACK) $(LOCALBIN)/customerloop-dev dev $(ARGS)

.PHONY: bench
bench: build ## Measure ingestion against the Kafka engine and the Native ceiling in rounds, and the feedback side at 10M and 100M events (BENCH_OUT=bench-results.json; ARGS='-only feedback').
	addr=$$(hack/clickhouse.sh); $(CLUSTER_ENV) CLICKHOUSE_ADDR=$$addr go run ./test/bench -bin $(LOCALBIN)/customerloop $(ARGS)

.PHONY: helm-lint
helm-lint: $(HELM) ## Lint the chart (strict) with its default values and each ci/ values file.
	$(HELM) lint --strict charts/customerloop
	for f in charts/customerloop/ci/*-values.yaml; do $(HELM) lint --strict charts/customerloop -f "$$f"; done

.PHONY: docker-build
docker-build: ## Build the image IMG (default customerloop:dev).
	$(CONTAINER_TOOL) build --build-arg VERSION=$(VERSION) -t $(IMG) .

.PHONY: clean
clean: ## Remove build output (the cached control plane and ClickHouse data stay).
	rm -rf $(LOCALBIN)

##@ Deploy (to the cluster of the current kubectl context)

.PHONY: deploy
deploy: ## Apply config/default (CRD, RBAC, manager) running IMG.
	KUBECTL="$(KUBECTL)" IMG="$(IMG)" hack/deploy.sh apply

.PHONY: undeploy
undeploy: ## Delete every CustomerLoop (their deletionPolicy applies), then what deploy applied.
	KUBECTL="$(KUBECTL)" hack/deploy.sh delete

##@ Tools (pinned, installed into bin/)

$(CONTROLLER_GEN):
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	mv $(LOCALBIN)/controller-gen $@

$(HELM):
	@cache="$(TOOLS_CACHE)/helm-$(HELM_VERSION)"; \
	if [ ! -x "$$cache/helm" ]; then \
		echo "building helm $(HELM_VERSION) into $$cache (first run only: ~7 min on 2 cores)"; \
		GOBIN="$$cache" go install -trimpath -ldflags "$(HELM_LDFLAGS)" helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
	fi; \
	mkdir -p $(LOCALBIN); cp "$$cache/helm" $@

$(SETUP_ENVTEST):
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-runtime/tools/setup-envtest@$(SETUP_ENVTEST_VERSION)
	mv $(LOCALBIN)/setup-envtest $@
