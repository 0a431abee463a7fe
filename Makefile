# linkscope: `make demo` and `make test` do all set-up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEBS   := iproute2 iputils-ping traceroute mtr-tiny fping iperf3 openssh-server openssh-client \
          socat haproxy procps psmisc
# the Debian tools the tests use; installed when running as root and any is missing
DEB_BINS := ip ping traceroute mtr fping iperf3 sshd ssh socat haproxy ps killall

.PHONY: install demo test lint typecheck pytest bench clean debs

install: $(STAMP) debs

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,analysis,geo]'
	touch $(STAMP)

debs:
	@missing=""; for b in $(DEB_BINS); do command -v $$b >/dev/null 2>&1 || \
	  [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian tools (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null; \
	  else echo "note: missing$$missing; tests that need them will skip (run as root to install)"; fi; \
	fi

demo: install
	$(PY) -m linkscope.demo

lint: install
	$(VENV)/bin/ruff check linkscope tests bench
	$(VENV)/bin/ruff format --check linkscope tests bench

typecheck: install
	$(VENV)/bin/mypy linkscope

# As root, pytest runs in a network namespace of its own: only its loopback exists there, so
# nothing a test starts (a name lookup included) can reach an address but 127/8, ::1 and the
# labs the tests build. Without root the root and lab tests skip, and tests/conftest.py keeps
# the test process itself off DNS.
pytest: install
	@if [ "$$(id -u)" = 0 ] && command -v unshare >/dev/null 2>&1; then \
	  echo "unshare -n: pytest in a network namespace with only loopback"; \
	  unshare -n sh -c 'ip link set lo up && exec $(VENV)/bin/pytest -q -ra'; \
	else $(VENV)/bin/pytest -q -ra; fi

test: lint typecheck pytest

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
