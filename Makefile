# Everything runs inside .venv, built by `make install` from pinned releases.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
VLMDATA := $(VENV)/bin/vlmdata
# torchvision is needed by Qwen2-VL's processor and every video processor; this is the pair that loads together.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
FIXTURES := fixtures/data
DEMO_OUT := out/demo

.PHONY: install fixtures test test-fast demo clean bench

install: $(VENV)/.installed

# Headless Chromium renders the `vlmdata inspect` page in the tests. A file target, so apt runs only when the
# binary is missing; order-only below, so a newer Chromium never rebuilds the virtual environment.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium

$(VENV)/.installed: pyproject.toml constraints.txt | $(CHROMIUM)
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install $(TORCH_PINS)
	$(PYTHON) -m pip install -c constraints.txt -e '.[dev,train]' $(TORCH_PINS)
	touch $@

fixtures: $(FIXTURES)/.complete

$(FIXTURES)/.complete: $(VENV)/.installed fixtures/make_fixtures.py fixtures/build_tiny_models.py
	$(PYTHON) fixtures/make_fixtures.py $(FIXTURES)
	HF_HUB_OFFLINE=1 $(PYTHON) fixtures/build_tiny_models.py --out $(FIXTURES)/models

test: install fixtures
	$(PYTHON) -m pytest

test-fast: install fixtures
	$(PYTHON) -m pytest -m "not slow"

# recipes/tiny-gemma3.yaml writes under out/demo: convert -> tokenize -> train, each skipped when already done.
demo: install fixtures
	HF_HUB_OFFLINE=1 $(VLMDATA) run recipes/tiny-gemma3.yaml --quiet
	$(VLMDATA) convert $(FIXTURES)/mmiu -o $(DEMO_OUT)/mmiu --image-size 64 --overwrite --quiet
	$(VLMDATA) convert $(FIXTURES)/jsonl/conversations.jsonl -o $(DEMO_OUT)/jsonl --image-size 48x32 --overwrite --quiet
	$(VLMDATA) convert $(FIXTURES)/jsonl/conversations.jsonl -o $(DEMO_OUT)/jsonl-ray --image-size 48x32 --engine ray --overwrite --quiet
	cmp $(DEMO_OUT)/jsonl/data-00000-of-00001.arrow $(DEMO_OUT)/jsonl-ray/data-00000-of-00001.arrow && echo "--engine ray wrote the bytes --engine local wrote"
	$(VLMDATA) convert $(FIXTURES)/sharegpt/sharegpt.json -o $(DEMO_OUT)/sharegpt --image-size 64 --resize-mode fit --num-proc 2 --overwrite --quiet
	HF_HUB_OFFLINE=1 $(VLMDATA) tokenize $(DEMO_OUT)/jsonl -o $(DEMO_OUT)/shards-gemma3n --model $(FIXTURES)/models/gemma3n --overwrite --quiet
	@echo
	@echo "Demo outputs (load the datasets and shards with datasets.load_from_disk):"
	@echo "  normalised datasets: $(DEMO_OUT)/{llava,mmiu,jsonl,sharegpt}, and jsonl-ray (the same, on a Ray of this machine)"
	@echo "  token shards:        $(DEMO_OUT)/shards-gemma3 (images), $(DEMO_OUT)/shards-gemma3n (images and audio)"
	@echo "  LoRA adapter:        $(DEMO_OUT)/lora-gemma3 (trained by recipes/tiny-gemma3.yaml; loss curve in loss.png)"

clean:
	rm -rf $(FIXTURES) out .pytest_cache

# Benchmarks -> BENCHMARKS.md (about 21 minutes on 2 cores). BENCH_ARGS=--full for larger samples, --smoke to check.
bench: install fixtures
	HF_HUB_OFFLINE=1 $(PYTHON) -m bench.run_all $(BENCH_ARGS)
