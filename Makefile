# One-command entry points. Everything the tests need is installed from here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo lint test test-fast test-deps kafka-jars constraints clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: venv
	$(BIN)/detector demo

# System packages of the observability and edge tests, installed with apt when missing:
# prometheus (prometheus + promtool: dashboard queries, alert-rule tests),
# prometheus-alertmanager (amtool), docker-compose 1.29 (compose file validation),
# haproxy and rsyslog-kafka (rsyslog's omkafka: the HAProxy end-to-end test), nginx and
# libnginx-mod-http-js (njs: the nginx end-to-end test, with rsyslog-kafka). Each is
# package:command, or package:dpkg for a package without a command of its own.
# Without root or password-less sudo it only says what is missing; those tests then
# skip with the reason (as root, the HAProxy and nginx tests fail instead). The nginx
# service the package starts (port 80) is stopped and disabled: the test runs its own.
TEST_DEBS := prometheus:promtool prometheus:prometheus prometheus-alertmanager:amtool docker-compose:docker-compose \
	haproxy:haproxy rsyslog-kafka:dpkg nginx:nginx libnginx-mod-http-js:dpkg

test-deps:
	@missing=""; for pair in $(TEST_DEBS); do \
		pkg=$${pair%%:*}; cmd=$${pair#*:}; \
		if [ "$$cmd" = dpkg ]; then dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'ok installed'; \
		else command -v $$cmd >/dev/null 2>&1; fi \
		|| case " $$missing " in *" $$pkg "*) ;; *) missing="$$missing $$pkg";; esac; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else \
		echo "NOTE: missing test packages:$$missing (apt-get install them as root): their tests will be SKIPPED"; exit 0; fi; \
	echo "installing test packages:$$missing"; \
	$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
		|| echo "NOTE: could not install$$missing: their tests will be SKIPPED"; \
	case " $$missing " in *" nginx "*) \
		$$sudo systemctl disable --now nginx >/dev/null 2>&1 || $$sudo service nginx stop >/dev/null 2>&1 || true;; esac

# The lint gate, zero findings: ruff (rules and their reasons in pyproject.toml
# [tool.ruff]) on detector/, agents/ and scripts/, and mypy --strict on detector/ and
# agents/ ([tool.mypy]). make test runs it before the tests (so CI does); make test-fast
# does not.
lint: venv
	$(BIN)/ruff check --no-cache detector agents scripts
	$(BIN)/mypy

# Both broker tiers: the embedded broker always; real Apache Kafka where Java and
# Maven exist (tests/kafka/fetch.sh fetches its jars from Maven Central).
test: venv test-deps lint
	@if command -v java >/dev/null && command -v mvn >/dev/null; then \
		bash tests/kafka/fetch.sh || exit 1; \
	else \
		echo "NOTE: java/mvn not found: the Apache Kafka tier will be SKIPPED"; \
	fi
	$(BIN)/python -m pytest -q -ra

# The embedded broker tier only, without the tests marked slow (more than ~5 s each).
test-fast: venv test-deps
	DETECTOR_TEST_TIERS=embedded $(BIN)/python -m pytest -q -ra -m 'not slow'

# Re-pin the tested versions after changing dependencies in pyproject.toml.
constraints:
	rm -rf .constraints-venv && $(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/pip install -q -e '.[test]'
	(echo "# Versions the test suite passed with (pip constraints). Regenerate: make constraints"; \
	 .constraints-venv/bin/pip freeze --exclude-editable | grep -v '^-e' | sort) > constraints.txt
	rm -rf .constraints-venv

kafka-jars:
	bash tests/kafka/fetch.sh

# detector-data/: Faust's data directory of a worker run from the repository root
# (`detector run`; set APP_DATADIR to put it elsewhere).
clean:
	rm -rf $(VENV) tests/kafka/target .pytest_cache .mypy_cache detector-data
