# The commands of README.md: `make run`, `make test`, `make demo`; `make lock` refreshes uv.lock.
.PHONY: run test setup lock

run:
	scripts/run

test:
	scripts/test

setup:
	scripts/setup --test

lock:
	scripts/lock
