# One-command entry points. Everything the tests need is installed from here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast kafka-jars constraints clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: venv
	$(BIN)/detector demo

# Both broker tiers: the embedded broker always; real Apache Kafka where Java and
# Maven exist (tests/kafka/fetch.sh fetches its jars from Maven Central).
test: venv
	@if command -v java >/dev/null && command -v mvn >/dev/null; then \
		bash tests/kafka/fetch.sh || exit 1; \
	else \
		echo "NOTE: java/mvn not found: the Apache Kafka tier will be SKIPPED"; \
	fi
	$(BIN)/python -m pytest -q -ra

test-fast: venv
	DETECTOR_TEST_TIERS=embedded $(BIN)/python -m pytest -q -ra

# Re-pin the tested versions after changing dependencies in pyproject.toml.
constraints:
	rm -rf .constraints-venv && $(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/pip install -q -e '.[test]'
	(echo "# Versions the test suite passed with (pip constraints). Regenerate: make constraints"; \
	 .constraints-venv/bin/pip freeze --exclude-editable | grep -v '^-e' | sort) > constraints.txt
	rm -rf .constraints-venv

kafka-jars:
	bash tests/kafka/fetch.sh

clean:
	rm -rf $(VENV) tests/kafka/target .pytest_cache
