# The two commands of README.md: `make run` and `make test`.
.PHONY: run test setup bench

run:
	scripts/run

test:
	scripts/test

setup:
	scripts/setup --test
