# make run   - install into .venv and start the server on the embedded default
# make test  - install everything the tests need and run every test
# make cluster - N=2 server processes behind nginx on RabbitMQ (PORT=8080);
#                BROKERS=3 starts a RabbitMQ cluster of three nodes of its own for them
# make bench - benchmarks against bare Tornado, then files, search, notifications, user
#              streams and broker memory (quick, about 10 minutes; MODE=full for all of it)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test lint rabbitmq chromium nginx cluster bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) server.py --embedded

# RabbitMQ must be up for the realtime tests, unless CHAT_TEST_AMQP_URL points elsewhere.
rabbitmq:
	@if [ -z "$$CHAT_TEST_AMQP_URL" ] && ! rabbitmqctl -q status >/dev/null 2>&1; then \
	  echo "starting RabbitMQ"; rabbitmq-server -detached; \
	  rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 || timeout 60 rabbitmqctl -q wait --timeout 60 --pid $$(pgrep -f beam.smp | head -1); \
	fi

# Debian's Chromium for the browser tests (Playwright's own download does not work here).
# With a colour emoji font, so reactions show (and are screenshotted) as emoji.
chromium:
	@{ command -v chromium && dpkg -s fonts-noto-color-emoji; } >/dev/null 2>&1 || { \
	  echo "installing chromium and an emoji font"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null); }

# Debian's nginx, run by `make cluster` and the tests as a foreground child with
# its own config; the system service is never started.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  echo "installing nginx"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     -o DPkg::Lock::Timeout=300 nginx >/dev/null); }

N       ?= 2
PORT    ?= 8080
BROKERS ?= 0
cluster: $(VENV)/.installed nginx
	@if [ "$(BROKERS)" = 0 ]; then $(MAKE) -s rabbitmq; fi
	$(PY) -m deploy.cluster --servers $(N) --port $(PORT) --brokers $(BROKERS)

test: $(VENV)/.installed-test rabbitmq chromium nginx
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

# The benchmark starts its own MongoDB wire server and uses RabbitMQ; results in bench/results/.
$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(PIP) install -e '.[bench]'
	touch $@

MODE ?= quick
bench: $(VENV)/.installed-bench rabbitmq
	$(PY) -m bench.run --mode $(MODE)
	$(PY) -m bench.signals $(if $(filter full,$(MODE)),--rounds 3,--rounds 1 --seconds 5)
	$(PY) -m bench.files --clients 20 --mib 25
	$(PY) -m bench.search --mode $(MODE)
	$(PY) -m bench.notifications $(if $(filter full,$(MODE)),--posts 200,--posts 30)
	$(PY) -m bench.streams $(if $(filter full,$(MODE)),,--users 1000 --rooms 200 --rates 100,300 --seconds 5)
	$(PY) -m bench.broker_memory $(if $(filter full,$(MODE)),,--exchanges 20000 --queues 10000)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) data build *.egg-info
