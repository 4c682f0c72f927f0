# Quick start (README): `make run` installs the runtime and starts the camera demo;
# `make test` installs everything for development and runs the test suite (CI runs this).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

run: $(PY)
	$(PIP) install -q .
	$(VENV)/bin/fer-run --camera 0

test: $(PY)
	$(PIP) install -q -e '.[dev]'
	$(PY) -m pytest

lint: $(PY)
	$(VENV)/bin/ruff check .

.PHONY: run test lint

# The exact recipe behind the shipped models (models/MODEL_CARD.md): teacher -> pruned + fine-tuned
# with the teacher's soft targets -> ONNX -> INT8 -> bench. About 60 minutes on 2 cores with native bf16
# (AVX512-BF16); about 5 hours in fp32 on an AVX2-only CPU (benchmarks/train_step_speed.py).
FER_DATA ?= ../shared/data/fer2013
TEACHER := runs/vgg_w050_e50_deconv
models: $(PY)
	$(PIP) install -q -e '.[train]'
	$(VENV)/bin/fer-train --data-root $(FER_DATA) --protocol fer2013 --model vgg --model-arg width=0.5 \
	  --epochs 50 --batch-size 64 --opt adamw --lr 1e-3 --weight-decay 0.05 --label-smoothing 0.05 \
	  --sampler sqrt --ema 0.999 --seed 0 --threads 2 --input-blur 3.25 --train-deconv 3e-4 \
	  --out-dir runs --name vgg_w050_e50_deconv --no-progress
	$(VENV)/bin/fer-export $(TEACHER)/best.pt --out-dir exports --name teacher_vgg_w050_e50_deconv
	$(VENV)/bin/fer-export $(TEACHER)/best.pt --distill-from $(TEACHER)/best.pt \
	  --prune 0.35 --finetune-epochs 8 --int8 --calib-size 512 --calib-method entropy \
	  --train-arg=--batch-size=64 --train-arg=--label-smoothing=0.05 --train-arg=--sampler=sqrt \
	  --train-arg=--ema=0.999 --train-arg=--threads=2 --out-dir exports --name deconv_p035
	cp exports/teacher_vgg_w050_e50_deconv/model.onnx models/fer_teacher.onnx
	cp exports/deconv_p035/model.onnx models/fer_default.onnx
	cp exports/deconv_p035/model.int8.onnx models/fer_default.int8.onnx
	$(VENV)/bin/python benchmarks/make_video.py benchmarks/results/moving_face.mp4 600
	$(MAKE) bench

bench: $(PY)
	$(VENV)/bin/fer-bench --data-root $(FER_DATA) --protocol fer2013 --split test \
	  --out-dir benchmarks/results --predictions benchmarks/results/predictions.csv \
	  --pipeline benchmarks/results/moving_face.mp4

.PHONY: models bench
