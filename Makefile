# rtgrid — two commands matter: `make demo` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export RAY_TMPDIR ?= /tmp/rtgrid-ray

.PHONY: install tools proto test demo bench-grid bench-dose bench-seg bench-conversion bench-load bench-plan-hn clean model-hn model-hn-deeplab model-dose bench-predict gpu-check bench-scale

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# External references the tests use: dciodvfy (dicom3tools) validates our DICOM, dcmtk
# (storescu/storescp) is the gateway's DICOM peer, poppler (pdftoppm/pdftotext) renders and reads
# the plan report, postgresql's server binaries (initdb, pg_ctl) run the throwaway database of the
# PostgreSQL store tests. Debian packages; root on these machines. (plastimatch, the independent
# DVH, comes from its PyPI wheel in the [test] extra.)
tools:
	@command -v dciodvfy >/dev/null && command -v storescp >/dev/null && command -v pdftoppm >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools dcmtk poppler-utils postgresql >/dev/null; } || echo "warning: could not install dicom3tools, dcmtk, poppler-utils and postgresql"

proto: install
	$(PY) -m rtgrid.protos.generate

test: install tools
	mkdir -p $(RAY_TMPDIR)
	$(PY) -m pytest -q -p no:cacheprovider

demo: install
	mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/rtgrid demo --out demo-output

bench-grid: install
	mkdir -p $(RAY_TMPDIR)
	$(PY) -m bench.grid

bench-dose: install
	$(PY) -m bench.dose

bench-seg: install
	$(PY) -m bench.seg

# Retrain the built-in head-and-neck model from ../shared/data/openkbp (fixed seed, fixed budget:
# a U-Net of 16 base channels for 16 epochs of 500 iterations, batch 32, whole slices, its best
# epoch by the DSC of 11 validation patients; about 4 min on one H200, several hours on 2 CPU
# cores with HN_DEVICE=cpu), score it on all 33 validation patients, finalize it as rtgrid-hn-oar
# 3.2.0 and compare with the shipped card (exit 1 when a DSC differs by more than 0.02).
# model-hn-deeplab trains the DeepLabv3+ of the comparison.
HN_BUILD := build/model-hn
HN_TRAIN := engines/segmentation/deep/builtin/train
HN_DEVICE ?= cuda
model-hn: install
	mkdir -p $(HN_BUILD)
	nice -n 10 $(VENV)/bin/rtgrid train-seg $(HN_TRAIN)/hn-oar-unet-cuda.json --out $(HN_BUILD)/unet --device $(HN_DEVICE) --workers 8
	nice -n 10 $(PY) -m rtgrid.engines.segmentation.deep.hn_eval $(HN_BUILD)/unet/package ../shared/data/openkbp/validation \
		--name rtgrid-hn-oar --version 3.2.0 --out $(HN_BUILD)/rtgrid-hn-oar --compare engines/segmentation/deep/builtin/rtgrid-hn-oar

model-hn-deeplab: install
	mkdir -p $(HN_BUILD)
	nice -n 10 $(VENV)/bin/rtgrid train-seg $(HN_TRAIN)/hn-oar-deeplab.json --out $(HN_BUILD)/deeplab
	nice -n 10 $(PY) -m rtgrid.engines.segmentation.deep.hn_eval $(HN_BUILD)/deeplab/package ../shared/data/openkbp/validation \
		--name rtgrid-hn-oar-deeplab --out $(HN_BUILD)/rtgrid-hn-oar-deeplab

# Retrain the built-in head-and-neck dose prediction model from ../shared/data/openkbp (fixed seed,
# niced on 2 shared CPU cores) in four cosine cycles: 1100 steps or 18 min; a warm restart of 8000
# steps or 50 min at half the learning rate (version 2); a warm restart of 6000 steps of batch 16 or
# 70 min with mirrored patients, selected on 11 validation patients (version 3, about 56 min on one
# core); 8000 more such steps or 95 min (version 4). Each cycle scores itself on the 33 validation
# patients (the card records the figures). Version 5 is version 4's weights with each target's
# dose-volume calibration fitted on the training patients (about 8 min). The built-in version 4
# is version 3, trained before the inputs had their target distance channels, widened with zero
# weights for them (its card names it): a retrain here has the distances from the first cycle.
DOSE_MODEL ?= engines/dose_prediction/builtin/rtgrid-hn-dose
DOSE_BUILD := build/model-dose
model-dose: install
	mkdir -p $(DOSE_BUILD)
	nice -n 10 $(PY) -m rtgrid.engines.dose_prediction.train --out $(DOSE_BUILD)/cycle1 --iterations 1100 --minutes 18
	nice -n 10 $(PY) -m rtgrid.engines.dose_prediction.train --init $(DOSE_BUILD)/cycle1 --out $(DOSE_BUILD)/cycle2 \
		--iterations 8000 --minutes 50 --lr 0.0005 --version 2
	nice -n 10 $(PY) -m rtgrid.engines.dose_prediction.train --init $(DOSE_BUILD)/cycle2 --out $(DOSE_BUILD)/cycle3 \
		--iterations 6000 --minutes 70 --lr 0.0003 --batch 16 --flip 0.5 --select-patients 11 --select-every 500 --version 3
	nice -n 10 $(PY) -m rtgrid.engines.dose_prediction.train --init $(DOSE_BUILD)/cycle3 --out $(DOSE_BUILD)/cycle4 \
		--iterations 8000 --minutes 95 --lr 0.0003 --batch 16 --flip 0.5 --select-patients 11 --select-every 500 --version 4
	nice -n 10 $(PY) -m rtgrid.engines.dose_prediction.calibrate --package $(DOSE_BUILD)/cycle4 --out $(DOSE_MODEL) --version 5

# Dose and DVH scores of the built-in dose model on the OpenKBP validation patients (--patients N).
bench-predict: install
	$(PY) -m bench.predict

bench-conversion: install
	mkdir -p $(RAY_TMPDIR)
	$(PY) -m bench.conversion

bench-plan-hn: install
	mkdir -p $(RAY_TMPDIR)
	$(PY) -m bench.plan_hn

# One wave of 50 hospitals on the secure grid; `make bench-load SOAK=3`: a 3-minute soak instead.
bench-load: install
	mkdir -p $(RAY_TMPDIR)
	$(PY) -m bench.load $(if $(SOAK),--soak $(SOAK))

# The same full-size contour job on 1, 2 and 4 one-CPU agents of one grid: speed-up and efficiency.
bench-scale: install
	mkdir -p $(RAY_TMPDIR)
	$(PY) -m bench.scale

# Every CUDA path against the CPU path (bench/gpu_check.py; about 3 minutes on one H200, the plan check 53 s of it).
# cupy is installed only where nvidia-smi exists and cupy is not importable yet: the `gpu` extra
# (CUDA 12) or `gpu-cuda13` when the driver reports CUDA 13; without a CUDA device the check
# prints 'no CUDA device' and exits 0.
gpu-check: install
	@if command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import cupy" 2>/dev/null; then \
	  extra=gpu; if nvidia-smi | grep -q "CUDA Version: 13"; then extra=gpu-cuda13; fi; \
	  $(PY) -m pip install -q -e ".[$$extra]" || echo "warning: could not install the $$extra extra (cupy): the dij check will fail"; fi
	$(PY) -m bench.gpu_check

clean:
	rm -rf $(VENV) demo-output .pytest_cache
