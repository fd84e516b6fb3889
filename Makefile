# The two commands of README.md. Both set up what they need (scripts/setup.sh).
.PHONY: setup vendor demo test test-fast lint docs bench clean

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

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or reference fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet

bench: setup
	.venv/bin/pybatch bench

clean:
	rm -rf .venv build dist site *.egg-info
