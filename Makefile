# The two commands of README.md. Both set up what they need (scripts/setup.sh).
.PHONY: setup vendor demo test test-fast lint bench clean

setup:
	@bash scripts/setup.sh

# Test-only builds (pg_cron 1.6), before any test server starts.
vendor: setup
	@bash scripts/build_vendor.sh

demo: setup
	.venv/bin/pybatch demo

test: vendor
	.venv/bin/python -m pytest

test-fast: vendor
	.venv/bin/python -m pytest -m "not slow"

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/python tools/async_to_sync.py --check

bench: setup
	.venv/bin/pybatch bench

clean:
	rm -rf .venv build dist *.egg-info
