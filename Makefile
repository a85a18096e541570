# Set-up is part of every target: a fresh machine needs only `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# infinity-emb (the OpenAI-compatible embeddings server the remote-model tests and bench talk to) pins its
# own sentence-transformers: it gets a virtualenv of its own.
INFINITY_VENV ?= .venv-infinity
# transformers serve (an OpenAI-compatible chat server for the RAG tests), also in its own virtualenv.
CHAT_VENV ?= .venv-chat

.PHONY: demo test bench install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first (on local disk here); anything else pulls several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(INFINITY_VENV)/.installed:
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/python -m pip install -q torch==2.13.0
	$(INFINITY_VENV)/bin/python -m pip install -q "infinity-emb[server,torch]==0.0.78"
	touch $@

$(CHAT_VENV)/.installed:
	$(PYTHON) -m venv $(CHAT_VENV)
	$(CHAT_VENV)/bin/python -m pip install -q torch==2.13.0
	$(CHAT_VENV)/bin/python -m pip install -q "transformers[serving]==5.23.0"
	touch $@

# Portkey's open-source AI gateway (Node) in front of those servers for the portkey/<provider>/<model> tests;
# npm installs it into .portkey/ (Node and npm from apt when missing, as in CI).
PORTKEY_DIR ?= .portkey
$(PORTKEY_DIR)/.installed:
	command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm)
	npm install -q --prefix $(PORTKEY_DIR) --save-exact --no-audit --no-fund @portkey-ai/gateway@1.9.8
	touch $@

.PHONY: portkey
portkey: $(PORTKEY_DIR)/.installed

SERVERS := $(INFINITY_VENV)/.installed $(CHAT_VENV)/.installed $(PORTKEY_DIR)/.installed

# Debian's Chromium for the Vectorize page's browser test (Playwright drives it; it cannot download browsers
# here). Needs root, as in CI.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

install: $(VENV)/.installed $(SERVERS) $(CHROMIUM)

demo: $(VENV)/.installed
	$(PY) scripts/run_example.py

test: $(VENV)/.installed $(SERVERS) $(CHROMIUM)
	$(PY) -m pytest

bench: $(VENV)/.installed $(INFINITY_VENV)/.installed
	$(PY) -m bench

# A real Airflow 3 (scheduler, dag-processor, triggerer, api-server; metadata DB on the embedded PostgreSQL)
# runs the example DAGs through the scheduler and prints their outcome from the REST API (scripts/deployment.py).
.PHONY: deployment deployment-celery bench-backfill bench-api bench-reload bench-writes bench-hybrid-documents bench-providers bench-retrieval bench-tune bench-scaling bench-halfvec bench-million bench-swap bench-reindex bench-due-rows bench-huge-pages bench-partitioned
deployment: $(VENV)/.installed
	$(PY) scripts/deployment.py --executor LocalExecutor

deployment-celery: $(VENV)/.installed
	$(PY) scripts/deployment.py --executor CeleryExecutor --workers 2

# Backfill throughput through CeleryExecutor at 1, 2 and 4 workers (bench/backfill.py).
bench-backfill: $(VENV)/.installed
	$(PY) -m bench.backfill

# The HTTP API under load: 1 / 8 / 32 clients, standalone and mounted in Airflow's api-server (bench/api.py).
bench-api: $(VENV)/.installed
	$(PY) -m bench.api

# Full reloads (TRUNCATE / DELETE + COPY, 1 % of texts changed) then generation, vs the same reload without a
# project plus the model on the changed texts (bench/reload.py).
bench-reload: $(VENV)/.installed
	$(PY) -m bench.reload

# What a manual and a realtime project cost COPY, INSERT, UPDATE, DELETE and TRUNCATE of their table (bench/writes.py).
bench-writes: $(VENV)/.installed
	$(PY) -m bench.writes

# Hybrid search of an unchunked project by its stored full-text documents, 1,500 PyPI READMEs (bench/hybrid_documents.py).
bench-hybrid-documents: $(VENV)/.installed
	$(PY) -m bench.hybrid_documents

# Each remote provider's generation (cohere, voyage, portkey, self-hosted) vs a bare client of the same requests (bench/providers.py).
bench-providers: $(VENV)/.installed $(SERVERS)
	$(PY) -m bench.providers

# Retrieval quality through the product's API: unchunked vs chunked, vector vs hybrid, on real READMEs (bench/retrieval.py).
bench-retrieval: $(VENV)/.installed
	$(PY) -m bench.retrieval

# ef_search tuned per project at 100k rows: recall vs exact and p50 at the default 40 vs the tuned value (bench/tune.py).
bench-tune: $(VENV)/.installed
	$(PY) -m bench.tune

# import_embeddings with the HNSW build at 100k / 300k / 1M rows: seconds per row, worker and server memory (bench/scaling.py).
bench-scaling: $(VENV)/.installed
	$(PY) -m bench.scaling

# A half-precision HNSW index against a full one: build time, size, recall@10 at the same ef_search (bench/halfvec.py).
bench-halfvec: $(VENV)/.installed
	$(PY) -m bench.halfvec

# A 1M-row project: search (hook vs raw SQL, warm and after a restart, filtered), 1 % re-import and regeneration (bench/million.py).
bench-million: $(VENV)/.installed
	$(PY) -m bench.million

# A 10 % re-import while searching, written in place and into a new table swapped in (bench/swap.py).
bench-swap: $(VENV)/.installed
	$(PY) -m bench.swap

# An HNSW index built again with other settings while searching: concurrently then swapped vs dropped and built (bench/reindex.py).
bench-reindex: $(VENV)/.installed
	$(PY) -m bench.reindex

# Finding the rows due (a generation run's scan, get_freshness) at 100k and 1M rows vs every text's md5 (bench/due_rows.py).
bench-due-rows: $(VENV)/.installed
	$(PY) -m bench.due_rows

# A parallel HNSW build with its graph on huge pages vs ordinary pages, 100k and 1M rows; needs root (bench/huge_pages.py).
bench-huge-pages: $(VENV)/.installed
	$(PY) -m bench.huge_pages

# A realtime run of a queued row on a partitioned source vs a plain table, and a DELETE of a third of its rows (bench/partitioned.py).
bench-partitioned: $(VENV)/.installed
	$(PY) -m bench.partitioned
