# hyper: docker run, one micro-VM per pod.  Everything here runs as root on Debian 12.
SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := $(CURDIR)/.venv
SHARE := /usr/local/share/hyper
ROOT := /var/lib/hyper
CACHE := /var/cache/hyper
HOST := unix:///run/hyper/hyperd.sock
export HYPER_CACHE := $(CACHE)

# What hyper needs at run time, to build the guest kernel and disk, and to test.
APT_PACKAGES := qemu-system-x86 linux-source-6.1 busybox-static erofs-utils e2fsprogs \
	build-essential bc bison flex libelf-dev libssl-dev python3-venv python3-pip xz-utils procps \
	skopeo docker-registry mmdebstrap nftables iproute2 libseccomp2
BENCH_PACKAGES := podman crun runc

.PHONY: deps venv kernel guest busybox install run test unit lint bench clean

deps: $(CACHE)/.deps-installed
$(CACHE)/.deps-installed: Makefile
	@mkdir -p $(CACHE)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)
	@touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

kernel: deps
	@install -d $(SHARE)
	@k=$$($(PYTHON) kernel-config/build.py | tail -n1) && install -m 0644 "$$k" $(SHARE)/vmlinux && echo "kernel: $(SHARE)/vmlinux"

guest: deps
	@install -d $(SHARE)
	@g=$$($(PYTHON) -m hyperstart.build | tail -n1) && install -m 0644 "$$g" $(SHARE)/guest.erofs && echo "guest: $(SHARE)/guest.erofs"

busybox: venv
	$(VENV)/bin/python -m hyperd.image.busybox --root $(ROOT)

# Bytecode compiled ahead: every `hyper` command starts without compiling its modules, even
# where PYTHONDONTWRITEBYTECODE keeps Python from caching them itself (40 ms of each command here).
install: deps venv kernel guest busybox
	$(VENV)/bin/python -m compileall -q cli hyperd >/dev/null
	ln -sf $(VENV)/bin/hyper /usr/local/bin/hyper
	ln -sf $(VENV)/bin/hyperd /usr/local/bin/hyperd

# Starts hyperd in the background (log: /var/log/hyperd.log) unless one is running.
run: install
	@if ! hyper -H $(HOST) version >/dev/null 2>&1; then \
		echo "starting hyperd (log: /var/log/hyperd.log)"; \
		setsid hyperd -H $(HOST) --root $(ROOT) >>/var/log/hyperd.log 2>&1 < /dev/null & \
		for i in $$(seq 1 600); do hyper -H $(HOST) version >/dev/null 2>&1 && break; sleep 0.1; done; \
	fi
	hyper -H $(HOST) run --rm busybox echo hello from a micro-VM

lint: venv
	$(VENV)/bin/ruff check cli hyperd hyperstart kernel-config tests bench
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests/unit

test: install lint
	$(VENV)/bin/pytest -v -p no:cacheprovider tests

bench: install
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BENCH_PACKAGES)
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/images.py
	$(VENV)/bin/python bench/network.py
	$(VENV)/bin/python bench/streams.py

clean:
	rm -rf $(VENV) build
