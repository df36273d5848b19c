# Two commands do all set-up and work on a fresh machine:
#   make demo   - create .venv, install (torch pinned first), run the shipped models on the built-in real example scan
#   make test   - create .venv, install, run the test suite
# DATA=<folder of DICOM or NIfTI> makes `make demo` run on your data instead.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
TORCH  ?= torch==2.13.0
OUT    ?= demo_out
DATA   ?=
JOBS   ?= 2

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lungnod demo --out $(OUT) $(if $(DATA),--input $(DATA),)

test: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n $(JOBS) -q tests

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
