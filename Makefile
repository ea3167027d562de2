# The commands of README.md: `make demo`, `make run`, `make test`; `make lock` refreshes uv.lock.
.PHONY: demo run test setup lock

demo:
	scripts/demo

run:
	scripts/run

test:
	scripts/test

setup:
	scripts/setup --test

lock:
	scripts/lock
