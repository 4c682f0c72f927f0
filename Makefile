# Quick start (README): `make run` installs the runtime (the CPU build of ONNX Runtime, `.[cpu]`) and runs fer-run on
# camera 0 (or, with no camera, on the bundled demo photo);
# `make test` installs everything for development and runs the test suite (CI runs this).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

run: $(PY)
	$(PIP) install -q '.[cpu,desktop]'
	$(VENV)/bin/fer-run

test: $(PY)
	$(PIP) install -q -e '.[cpu,dev]'
	$(PY) -m pytest

# The runtime tests again in a venv with the base install only (no torch), headless, on the other OpenCV major than
# `make test` (which gets the newest, 5.x): OPENCV=4 by default; with fer-serve's extra.
RUNTIME_VENV ?= .venv-runtime
OPENCV ?= 4
test-runtime:
	python3 -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q --upgrade pip
	$(RUNTIME_VENV)/bin/python -m pip install -q '.[cpu,headless,serve]' 'opencv-contrib-python-headless==$(OPENCV).*' \
	  pytest onnx scikit-image
	$(RUNTIME_VENV)/bin/python -m pytest -p no:cacheprovider tests/test_runtime_only.py tests/test_runtime.py \
	  tests/test_calibration.py tests/test_decision_rule.py tests/test_providers.py tests/test_api.py \
	  tests/test_background.py tests/test_cores.py tests/test_streams.py tests/test_api_threads.py tests/test_serve.py \
	  tests/test_serve_browser.py

lint: $(PY)
	$(VENV)/bin/ruff check .

.PHONY: run test test-runtime lint

# The shipped models (models/MODEL_CARD.md): each recipe in models/recipes/ is trained (or resumed from
# its last.pt, or kept when finished), exported to ONNX + INT8 with a temperature and a decision rule fitted
# on val, copied into models/ and benchmarked against the fer package. About 90 to 140 minutes per model on 2 cores with
# native bf16 (AVX512-BF16), both models side by side at their recipes' thread counts. A model with a stage 1
# (RUN_NAME_base, models/recipes/NAME_base.toml) trains that first and exports it to exports/NAME_base/, which its
# recipe starts from (--init): about 30 minutes more at one thread on an AVX2 EPYC.
SHARED ?= ../shared/data
# each shipped model: its recipe (models/recipes/NAME.toml) and the run that recipe writes
RECIPE_ferplus := ferplus
RUN_ferplus := runs/ferplus_robust_light_e20
RUN_ferplus_base := runs/ferplus_vgg_w025_d1222_kd4_e250
RECIPE_fer2013 := fer2013
RUN_fer2013 := runs/fer2013_robust_light_e20
RUN_fer2013_base := runs/fer2013_vgg_w025_d1222_kd4_e200
# the checkpoint each model ships from (best.pt unless named): the ship rule preferred this run's last epoch (RESULTS.md)
CKPT_fer2013 := last.pt
# teachers for the distilled students (not shipped): models/recipes/teacher_*.toml, seeds 0-3, exported to
# exports/teachers/DATA_sSEED/. About 5 minutes an epoch at one thread on a 2-core CPU (40 epochs, 3.3 hours each);
# with DEVICE=cuda on one H200, 5-7 s an epoch, four side by side (RESULTS.md)
TEACHER_SEEDS := 0 1 2 3
TEACHERS := $(foreach d,ferplus fer2013,$(foreach s,$(TEACHER_SEEDS),$(d)_s$(s)))
DEVICE ?= auto
# the crop framing of FER-style training crops under the Haar cascade (benchmarks/results/framing: margin 0.016,
# offset 0.000, +0.003 box sides, rounded)
EXPORT := --int8 --calib-size 512 --calib-method entropy --crop-margin 0.02 --crop-offset 0 --crop-offset 0 --out-dir exports
# measures on the AVX2 code path that most laptops and kiosks have (CPUID faulting hides AVX-512 and VNNI); on a CPU
# without AVX-512 the native path is that path, and run-avx2 (which needs CPUID faulting) is not used
RUN_AVX2 ?= $(if $(shell grep -qw avx512f /proc/cpuinfo && echo yes),../shared/tools/avx2/run-avx2)

models: $(PY)
	$(PIP) install -q -e '.[cpu,desktop,train]'
	$(MAKE) --no-print-directory -j2 model-ferplus model-fer2013
	$(MAKE) --no-print-directory bench
	$(VENV)/bin/python benchmarks/model_card.py

# train a recipe's run, or resume it from its last.pt, or keep it when finished (the rule: fer_train/run_status.py):
# $(call train,RUN,RECIPE[,FLAGS])
train = status=$$($(PY) -m fer_train.run_status $(1)) || exit 1; case $$status in \
	finished) echo "$(1) is trained";; \
	started) $(VENV)/bin/fer-train --resume $(1)/last.pt;; \
	new) $(VENV)/bin/fer-train --config models/recipes/$(2).toml $(3);; \
	*) exit 1;; esac

model-%: $(PY)
	$(if $(RUN_$*_base),@$(call train,$(RUN_$*_base),$*_base))
	$(if $(RUN_$*_base),test -f exports/$*_base/model.onnx || \
	  $(VENV)/bin/fer-export --ckpt $(RUN_$*_base)/best.pt --out-dir exports --name $*_base)
	@$(call train,$(RUN_$*),$(RECIPE_$*))
	rm -rf exports/$*
	$(VENV)/bin/fer-export --ckpt $(RUN_$*)/$(or $(CKPT_$*),best.pt) $(EXPORT) --name $*
	$(VENV)/bin/fer-eval --ckpt $(RUN_$*)/$(or $(CKPT_$*),best.pt) --split test
	cp exports/$*/model.onnx models/$*.onnx
	cp exports/$*/model.int8.onnx models/$*.int8.onnx

reexport: $(PY)
	$(PIP) install -q -e '.[cpu,desktop,train]'
	$(MAKE) --no-print-directory reexport-ferplus reexport-fer2013
	$(MAKE) --no-print-directory bench
	$(VENV)/bin/python benchmarks/model_card.py

# the shipped fp32 file exported again without its training run: decision rule fitted on val, INT8 quantized
# again from it (the same calibration sample and method as model-%), both copied back; then make bench and the card
reexport-%: $(PY)
	rm -rf exports/$*
	$(VENV)/bin/fer-export --model models/$*.onnx $(EXPORT) --name $* --data-root $(SHARED)/$*
	cp exports/$*/model.onnx models/$*.onnx
	cp exports/$*/model.int8.onnx models/$*.int8.onnx

YUNET := ../shared/models/face_detection_yunet.onnx
VIDEO := benchmarks/results/moving_face.mp4
VIDEO2 := benchmarks/results/two_faces.mp4
bench: $(PY)
	mkdir -p benchmarks/results/ferplus benchmarks/results/fer2013 benchmarks/results/pipeline
	test -f $(VIDEO) || $(VENV)/bin/python benchmarks/scripts/make_video.py $(VIDEO) 600
	test -f $(VIDEO2) || $(VENV)/bin/python benchmarks/scripts/make_video.py $(VIDEO2) 600 2
	$(VENV)/bin/fer-bench --model models/ferplus.onnx --model models/ferplus.int8.onnx \
	  --data-root $(SHARED)/ferplus --protocol ferplus --split test --out-dir benchmarks/results/ferplus \
	  --predictions benchmarks/results/ferplus/predictions.csv --shifts all
	$(VENV)/bin/fer-bench --model models/fer2013.onnx --model models/fer2013.int8.onnx \
	  --data-root $(SHARED)/fer2013 --protocol fer2013 --split test --out-dir benchmarks/results/fer2013 \
	  --predictions benchmarks/results/fer2013/predictions.csv --shifts all
	$(VENV)/bin/fer-bench --model models/ferplus.int8.onnx --model models/fer2013.int8.onnx \
	  --data-root $(SHARED)/ckplus --split all --out-dir benchmarks/results/ckplus
	$(VENV)/bin/fer-bench --model models/ferplus.int8.onnx --model models/fer2013.int8.onnx \
	  --data-root $(SHARED)/ferplus --protocol ferplus --split val --calls 50 --out-dir benchmarks/results/latency_native
	$(RUN_AVX2) $(VENV)/bin/fer-bench --model models/ferplus.int8.onnx --model models/fer2013.int8.onnx \
	  --data-root $(SHARED)/ferplus --protocol ferplus --split val --calls 50 --out-dir benchmarks/results/latency_avx2
	$(VENV)/bin/python -m benchmarks.scripts.measure_framing --data-root $(SHARED)/ferplus --protocol ferplus \
	  $(if $(wildcard $(YUNET)),--yunet $(YUNET)) --out-dir benchmarks/results/framing
	$(VENV)/bin/fer-bench --model models/ferplus.int8.onnx --data-root $(SHARED)/ferplus --protocol ferplus \
	  --split test --out-dir benchmarks/results/pipeline --pipeline $(VIDEO) --pipeline $(VIDEO2) --calls 5
	$(VENV)/bin/python -m benchmarks.scripts.small_faces benchmarks/results/small_faces
	$(MAKE) --no-print-directory runtimes-ferplus runtimes-fer2013

# a shipped model in every runtime's format (exports/NAME_formats: ONNX, OpenVINO IR, TFLite, fp32 and INT8, each checked
# against its ONNX file), the six files in one fer-bench run natively and one on the AVX2 code path: the card's
# "which runtime on this CPU" table
FORMAT_FILES := model.onnx model.int8.onnx model.xml model.int8.xml model.tflite model.int8.tflite
runtimes-%: $(PY)
	$(PIP) install -q -e '.[cpu,desktop,openvino,litert-export]'
	rm -rf exports/$*_formats
	$(VENV)/bin/fer-export --model models/$*.onnx $(EXPORT) --format onnx,openvino,tflite --name $*_formats \
	  --data-root $(SHARED)/$*
	$(VENV)/bin/fer-bench $(foreach f,$(FORMAT_FILES),--model exports/$*_formats/$(f)) --data-root $(SHARED)/$* \
	  --protocol $* --split test --out-dir benchmarks/results/runtimes_$*
	$(RUN_AVX2) $(VENV)/bin/fer-bench $(foreach f,$(FORMAT_FILES),--model exports/$*_formats/$(f)) --data-root $(SHARED)/$* \
	  --protocol $* --split test --out-dir benchmarks/results/runtimes_$*_avx2

teachers: $(PY)
	$(PIP) install -q -e '.[cpu,desktop,train]'
	$(MAKE) --no-print-directory -j2 $(addprefix teacher-,$(TEACHERS))

# teacher-ferplus_s0: train (or resume) runs/teacher_ferplus_vgg_w075_e40_s0, export it to exports/teachers/ferplus_s0
teacher-%: $(PY)
	$(eval DATA := $(word 1,$(subst _s, ,$*)))
	$(eval SEED := $(word 2,$(subst _s, ,$*)))
	$(eval RUN := runs/teacher_$(DATA)_vgg_w075_e40_s$(SEED))
	@$(call train,$(RUN),teacher_$(DATA),--seed $(SEED) --device $(DEVICE) --name $(notdir $(RUN)))
	test -f exports/teachers/$*/model.onnx || \
	  $(VENV)/bin/fer-export --ckpt $(RUN)/best.pt --out-dir exports/teachers --name $* --data-root $(SHARED)/$(DATA)

.PHONY: models bench teachers reexport
