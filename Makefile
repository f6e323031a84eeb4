# blackmamba: build, test, demo and the GPU bundle.
#
#   make test         vet, unit tests and every notebook headless (installs what it needs)
#   make demo         the main job on the CPU with the tiny configuration
#   make gpu-bundle   dist/gpu-bundle: stripped binaries and run.sh for a machine without Go
#
# Tools are installed inside the repository (.tools/), so nothing depends on PATH beyond Go.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
BIN       := $(CURDIR)/bin
BLACKMAMBA := $(BIN)/blackmamba
BUNDLE    := $(CURDIR)/dist/gpu-bundle
GO_TEST_FLAGS ?= -p 2 -timeout 30m

# The command `make demo` runs.
DEMO_RUN  := $(CURDIR)/.tools/demo-run
DEMO_CMD ?= $(BLACKMAMBA) backends -no-load && $(BLACKMAMBA) params -config tiny && rm -rf $(DEMO_RUN) && \
	$(BLACKMAMBA) train -backend go -config tiny -corpus data/corpus-tiny -steps 60 -batch 4 -seq 64 -lr 1e-2 \
		-log-every 10 -eval-every 30 -eval-batches 1 -checkpoint-every 30 -dir $(DEMO_RUN)
# Extra arguments for the experiment targets, e.g. make exp-training EXP_ARGS="-backend cuda".
EXP_ARGS ?=
# Extra files copied into the GPU bundle (a data sample, a config).
BUNDLE_EXTRA ?=

.PHONY: help setup test test-data vet unit notebooks build demo train data gpu-bundle \
	exp-training exp-balance exp-latency clean

help:
	@echo "targets: setup test demo build data train gpu-bundle exp-training exp-balance exp-latency clean"
	@echo "  make train TRAIN_ARGS='-config small -corpus data/corpus -dtype bfloat16 -dir runs/small'"

## setup: Jupyter's runner (Debian), GoNB and goimports (go.mod tools) and the GoNB kernel.
setup:
	@bash scripts/setup.sh

## test: what CI runs.
test: test-data vet unit notebooks

test-data:
	@bash scripts/fetch-test-data.sh

vet:
	$(GO) vet ./...

unit:
	$(GO) test $(GO_TEST_FLAGS) ./...

notebooks: setup
	@bash scripts/run-notebooks.sh

build:
	$(GO) build -o $(BLACKMAMBA) ./experiments/cmd/blackmamba

demo: build test-data
	$(DEMO_CMD)

data: build
	$(BLACKMAMBA) data build

## train: blackmamba train with $(TRAIN_ARGS) (see blackmamba train -h); a killed run continues
## from its newest checkpoint with the same arguments plus -resume.
train: build
	$(BLACKMAMBA) train $(TRAIN_ARGS)

exp-training: build
	$(BLACKMAMBA) experiment training $(EXP_ARGS)

exp-balance: build
	$(BLACKMAMBA) experiment balance $(EXP_ARGS)

exp-latency: build
	$(BLACKMAMBA) experiment latency $(EXP_ARGS)

## gpu-bundle: what the GPU machine (no Go, no network) needs, kept small.
gpu-bundle:
	rm -rf $(BUNDLE) && mkdir -p $(BUNDLE)
	GOOS=linux GOARCH=amd64 CGO_ENABLED=1 $(GO) build -trimpath -ldflags="-s -w" \
		-o $(BUNDLE)/blackmamba ./experiments/cmd/blackmamba
	GOOS=linux GOARCH=amd64 CGO_ENABLED=1 $(GO) test -c -trimpath -ldflags="-s -w" \
		-o $(BUNDLE)/bm.test ./bm
	GOOS=linux GOARCH=amd64 CGO_ENABLED=1 $(GO) test -c -trimpath -ldflags="-s -w" \
		-o $(BUNDLE)/train.test ./experiments/train
	install -m 755 scripts/gpu-run.sh $(BUNDLE)/run.sh
	$(if $(strip $(BUNDLE_EXTRA)),cp -r $(BUNDLE_EXTRA) $(BUNDLE)/)
	@du -shc $(BUNDLE)/*
	@# The same, compressed (about a third of the size), for machines that take a size-limited upload:
	@# unpack there with tar -xJf gpu-bundle.tar.xz.
	tar -C $(dir $(BUNDLE)) -cJf $(BUNDLE).tar.xz $(notdir $(BUNDLE))
	@du -sh $(BUNDLE).tar.xz

clean:
	rm -rf $(BIN) dist .tools/notebooks-out
