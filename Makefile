# The two set-up commands of the README: `make demo` (the main job on the embedded default) and `make test`.
# Both create the project's virtual environment with the pinned dependencies on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KMNRT := $(VENV)/bin/kmnrt
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

SHARED_VOS ?= ../shared/data/vos
# The demo's sequence (a folder with JPEGImages/ and Annotations/): a real DAVIS one when the shared test data sits
# next to the repository, else one the data generator makes (so `make demo` runs on any fresh machine).
GENERATED_SEQUENCE := out/demo-data/synthetic
DEMO_SEQUENCE ?= $(if $(wildcard $(SHARED_VOS)/davis2016_blackswan),$(SHARED_VOS)/davis2016_blackswan,$(GENERATED_SEQUENCE))
DEMO_CONFIG ?= small
DEMO_BUNDLE ?= engines/demo
DEMO_OUT ?= out/demo

.PHONY: demo test test-all default-model clean-venv

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# Export the embedded default model to an ONNX bundle, run it on the demo sequence, score it with J&F.
demo: $(STAMP) $(DEMO_SEQUENCE)
	$(KMNRT) export --config $(DEMO_CONFIG) --max-objects 4 --max-memory 16 --out $(DEMO_BUNDLE) --force
	$(KMNRT) run --bundle $(DEMO_BUNDLE) --input $(DEMO_SEQUENCE)/JPEGImages --mask $(DEMO_SEQUENCE)/Annotations/00000.png \
		--out $(DEMO_OUT)/$(notdir $(DEMO_SEQUENCE)) --overlay $(DEMO_OUT)/$(notdir $(DEMO_SEQUENCE)).mp4
	$(KMNRT) eval $(DEMO_SEQUENCE) $(DEMO_OUT) --json $(DEMO_OUT)/scores.json

$(GENERATED_SEQUENCE): | $(STAMP)
	rm -rf $@.tree && $(KMNRT) generate-data --out $@.tree --videos 1 --frames 40 --seed 2 --height 240 --width 432
	mkdir -p $@ && mv $@.tree/JPEGImages/synthetic-0000 $@/JPEGImages && mv $@.tree/Annotations/synthetic-0000 $@/Annotations
	rm -rf $@.tree

test: $(STAMP)
	$(PY) -m pytest -q

# Also the slow tests (paper-size parity, long runs).
test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

# Train the embedded default model from scratch on generated data (docs/default-model.md) and install it.
default-model: $(STAMP)
	nice -n 10 $(PY) -m kmnrt.training.default_model --out out/default-model --threads 1 \
		$(if $(wildcard $(SHARED_VOS)),--real $(SHARED_VOS)) --install model/weights/small_synthetic.safetensors

clean-venv:
	rm -rf $(VENV)
