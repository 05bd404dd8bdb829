# Two commands matter: `make run` (whole pipeline on the embedded default) and `make test`.
# Both create .venv from the pinned requirements on first use.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PYTHONUNBUFFERED := 1
export GX_ANALYTICS_ENABLED := False
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := 1

.PHONY: install run test test-fast mlflow-ui serve clean system-deps browser bench-serve bench-train \
	real-data real-data-cv search cv-table lint bench-airflow bench-adapt bench-series bench-monitor bench-run bench-recipe monitor-demo kfp-local

# torch's CPU build (the backbone conversion) comes from PyTorch's index where that host resolves; where it does
# not (an offline mirror, a machine with the wheel in pip's find-links), asking it anyway costs pip five retries
# per package, so it is left out.
TORCH_CPU_INDEX = $(shell $(PYTHON) -c "import socket; socket.getaddrinfo('download.pytorch.org', 443)" 2>/dev/null \
	&& echo --extra-index-url https://download.pytorch.org/whl/cpu)

$(BIN)/.installed: requirements/base.txt requirements/test.txt requirements/no-deps.txt requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/test.txt -c requirements/constraints.txt $(TORCH_CPU_INDEX)
	$(BIN)/python -m pip install -q --no-deps -r requirements/no-deps.txt
	touch $@

install: $(BIN)/.installed ## create .venv with the pinned dependencies

ORTHANC_PLUGIN := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
system-deps: ## Orthanc + its DICOMweb plugin (PACS tests), redis-server (the Celery broker of the Airflow test); Debian
	@if command -v Orthanc >/dev/null && [ -f $(ORTHANC_PLUGIN) ] && [ -x /usr/bin/redis-server ]; then \
	  echo "orthanc + orthanc-dicomweb + redis-server present"; \
	else $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	  --no-install-recommends orthanc orthanc-dicomweb redis-server; fi

browser: ## Debian chromium + chromium-driver for the page test; does nothing when present
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then echo "chromium + chromium-driver present"; \
	else $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	  --no-install-recommends chromium chromium-driver; fi

# DVC ends a repro that changed dvc.lock with "To track the changes with git, run: git add dvc.lock" and how to
# turn on auto staging. core.autostage is DVC's documented answer: it stages dvc.lock (and any .gitignore it
# wrote) itself, which is what the hint asks for, and then says nothing. It is set in .dvc/config.local (this
# clone only, git-ignored), so the committed .dvc/config and every other clone are left as they were;
# `dvc repro -q` would silence the hint too, but also DVC's own errors. Undo: git restore --staged dvc.lock.
run: install ## run every stage on the embedded default (a generated PACS export)
	@[ -d .git ] || git init -q
	@[ -d .dvc ] || $(BIN)/dvc init -q
	@$(BIN)/dvc config --local core.autostage true
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	$(BIN)/python -m components

# Real data: profiles/real-data.yaml laid over params.yaml through `dvc exp run -S`, so DVC records every value.
DVC_EXP = PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc exp run
PROFILE = $(BIN)/python -m components.profile
STAMP := $(shell date +%Y%m%d-%H%M)
# -k: a model below the profile's clinical gate stops register/package, but the report is still written;
# the summary says why nothing was registered and make exits non-zero.
real-data: install ## the whole pipeline on ../shared/data/kidney-ct with the best recipe (profiles/real-data.yaml)
	@args=$$($(PROFILE) real-data) || exit 2; $(DVC_EXP) -k -n real-data-$(STAMP) $$args; status=$$?; \
	$(BIN)/python -m components; exit $$status

# Two weeks of the embedded default in monitor-demo/ (its own store, registry, reports; wiped first): week 2 is new
# patients on another vendor's sharp kernel, noisier, another class mix, added to week 1's store; each week runs
# monitor -> alert (to a receiver on 127.0.0.1) -> retrain -> register.
monitor-demo: install ## two weekly exports, the second shifted: drift found, the alert sent, the decision taken
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m components.monitor.demo

# The Kubeflow pipeline executed by KFP's own local runner (kfp.local, SubprocessRunner, local cache on), each step a
# lightweight Python component running the stage's entry point in kfp-local/ (the workspace a cluster's volume would
# be), on profiles/tiny.yaml. Run it again: every cached step is served from KFP's cache. `rm -rf kfp-local` starts over.
KFP_LOCAL := kfp-local
kfp-local: install ## the Kubeflow pipeline run end to end by kfp.local on the tiny profile (in kfp-local/)
	@mkdir -p $(KFP_LOCAL) && $(PROFILE) tiny --write $(KFP_LOCAL)/params.yaml
	PYTHONPATH=$(CURDIR) PATH="$(abspath $(BIN)):$$PATH" TF_CPP_MIN_LOG_LEVEL=$${TF_CPP_MIN_LOG_LEVEL:-2} \
	  $(BIN)/python -m pipelines.local --params $(KFP_LOCAL)/params.yaml --workspace $(KFP_LOCAL)

real-data-cv: install ## only the grouped 5-fold CV of the real-data recipe (leakage stage and what it needs)
	@args=$$($(PROFILE) real-data) || exit 2; $(DVC_EXP) -n real-data-cv-$(STAMP) $$args leakage

TRIALS ?= $(shell $(BIN)/python -m components.profile --list-trials 2>/dev/null)
# Each trial is queued (DVC stashes its params; the workspace's params.yaml is never touched), then the queue
# runs one trial at a time in temp copies of the repo: the local object store and paths outside the repo are
# passed absolute (--queued), and MLflow logs to the project's store (DVC_ROOT). `--run-all` exits 0 even
# when a trial fails, hence the grep.
search: install ## grouped 5-fold CV of each trial in profiles/search.yaml (TRIALS="t01 t02" for some)
	@for t in $(TRIALS); do args=$$($(PROFILE) --search $$t --queued) || exit 2; \
	  $(DVC_EXP) --queue -n $$t $$args leakage || exit 1; done; \
	log=$$(mktemp); $(DVC_EXP) --run-all 2>&1 | tee $$log; failed=$$(grep -c "Failed to reproduce" $$log); \
	rm -f $$log; [ "$$failed" = 0 ] || { echo "search: a trial failed (dvc queue logs NAME shows why)"; exit 1; }
	$(BIN)/python -m components.leakage.table

bench-adapt: install ## after `make real-data`: frozen-backbone levers and layer4 fine-tuning by grouped CV (BENCHMARKS.md)
	@$(PROFILE) real-data --write .bench-adapt.params.yaml || exit 2
	$(BIN)/python -m components.backbone.bench --params .bench-adapt.params.yaml levers
	$(BIN)/python -m components.backbone.bench --params .bench-adapt.params.yaml finetune --folds 1 --lr 1e-5
	$(BIN)/python -m components.backbone.bench --params .bench-adapt.params.yaml finetune --folds 1 --lr 1e-5 --no-augment

bench-series: install ## after `make real-data`'s preprocess: series head, rule, body crop, scanner shift/aug by grouped CV (issue 33)
	@$(PROFILE) real-data --write .bench-series.params.yaml || exit 2
	$(BIN)/python -m components.backbone.series_bench --params .bench-series.params.yaml cache
	$(BIN)/python -m components.backbone.series_bench --params .bench-series.params.yaml cv --seeds 0 1

cv-table: install ## every grouped-CV trial logged to MLflow, as a Markdown table
	$(BIN)/python -m components.leakage.table

lint: install ## ruff check of the tree (rules and line length in pyproject.toml); make test runs it first
	$(BIN)/ruff check .

# Two pytest-xdist workers, each taking a whole test file at a time (a file's module fixtures are built once; the files
# that read the session's tiny pipeline go together), the longest first (tests/conftest.py places and orders them;
# --no-loadscope-reorder keeps that order): while one worker waits on a server (Airflow, MLflow, Orthanc, a Bento) or
# a subprocess's imports, the other computes. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: install lint ## lint, then the whole test suite (installs Orthanc and Chromium first when it can)
	@$(MAKE) --no-print-directory system-deps || echo "WARNING: no orthanc/orthanc-dicomweb/redis-server: the PACS and Airflow tests will skip"
	@$(MAKE) --no-print-directory browser || echo "WARNING: no chromium/chromium-driver: the browser test will skip"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: install ## unit tests only
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest tests/unit

mlflow-ui: install ## browse runs and the registry on http://127.0.0.1:5000
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns.db --host 127.0.0.1 --port 5000

serve: install ## serve the packaged champion on http://127.0.0.1:3000
	TF_CPP_MIN_LOG_LEVEL=$${TF_CPP_MIN_LOG_LEVEL:-2} BENTOML_HOME=$(CURDIR)/.bentoml PATH="$(abspath $(BIN)):$$PATH" $(BIN)/bentoml serve kidney_ct_classifier:latest --host 127.0.0.1 --port 3000

bench-monitor: install ## after `make real-data`: the monitor on a real week of ~1,000 slices, first pass, cached pass, shifted week
	@$(PROFILE) real-data --write .bench-monitor.params.yaml || exit 2
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m components.monitor.bench --params .bench-monitor.params.yaml

# ISA=AVX2 caps oneDNN's kernels as a host without AVX-512 would (a stand-in, not such a host: BENCHMARKS.md).
bench-run: install ## `make run` from nothing, timed stage by stage, in a scratch copy of HEAD -> reports/bench/run.json
	$(BIN)/python -m components.run_bench $(if $(ISA),--isa $(ISA))

# SET holds key=value changes to the candidate, space-separated, each without spaces: SET="epochs=20 filters=[8,32,64]".
bench-recipe: install ## after `make run`: the default's recipe on SEEDS (1 2 3), with SET changes: test macro-F1 and recalls per seed
	$(BIN)/python -m components.train.recipe_bench --seeds $(or $(SEEDS),1 2 3) $(foreach change,$(SET),--set '$(change)') \
	  $(if $(CANDIDATE),--candidate $(CANDIDATE)) --json reports/bench/recipe.json

bench-train: install ## per candidate: params, img/s synthetic vs through the feeder, ratio, peak RSS (KERAS_BACKEND picks the backend)
	$(BIN)/python -m components.train.bench --json reports/bench/train-$${KERAS_BACKEND:-tensorflow}.json

bench-serve: install ## load-test the service (1/8/32 clients); 100/300-slice studies by runtime, in process and served -> reports/serving/
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m serving.bench
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m serving.study_bench --served

bench-airflow: install ## a real Airflow 3 on 127.0.0.1, on a tiny project that ran: no-op weekly run vs asset-triggered retrain
	$(BIN)/pytest tests/pipeline/test_dag_airflow_server.py -q -s | grep -E "took|killed|passed|failed"

clean: ## remove pipeline outputs (keeps .venv)
	rm -rf data models reports mlruns.db mlartifacts .bentoml dvc.lock
