# Stepwise: `make run` runs the demo, `make test` runs every test against a throwaway redis-server.
SHELL := /bin/bash
.DEFAULT_GOAL := build

.PHONY: deps build release run test bench loadtest lint model-check model-check-old redis-up redis-down clean llm-demo

deps:
	@scripts/ensure-deps.sh

build: deps
	swift build

release: deps
	swift build -c release

run: release
	scripts/run-demo.sh

test: deps model-check
	scripts/test.sh

# A real model, offline (not part of `make test`): docs/LLM.md.
llm-demo: build
	scripts/llm-demo.sh

bench: release
	scripts/bench.sh

loadtest: release
	scripts/loadtest.sh

# Exhaustive spin check of the job protocol model (docs/MODEL.md); the old variants must fail.
model-check:
	model/check.sh

model-check-old:
	model/check.sh --old

lint:
	swift format lint --strict -r Sources Tests

redis-up: deps
	@scripts/redis-local.sh start .run/redis $${PORT:-6379}

redis-down:
	@scripts/redis-local.sh stop .run/redis

clean:
	rm -rf .build .run
