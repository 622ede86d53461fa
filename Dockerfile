# NVLM-D training image: NGC PyTorch (CUDA, NCCL, cuDNN, Transformer Engine, apex, Python 3.12)
# + megatron-core + this package. The image's own torch/TE builds are kept: every pip install
# below runs with a constraints file that pins the packages the image already ships.
#
# Build:  docker build -t nvlm_train .
# Run:    docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 -it --rm \
#           -v /path/to/data:/data -v /path/to/runs:/workspace/nvlm_train/runs nvlm_train
# Inside: python bench/model_step.py --config nvlm_d_2b --impl transformer_engine   (one GPU)
#         torchrun --nproc-per-node 8 <training entry point> ...                      (one node)
#         see launch/ for torchrun and SLURM launchers.
# The NGC entrypoint (driver/banner checks) is kept; CMD only chooses the default command.

ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.11-py3
FROM ${BASE_IMAGE}

# Must equal the pin in pyproject.toml (tests/test_bench_and_docker.py checks it).
ARG MEGATRON_CORE_VERSION=0.16.1

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

WORKDIR /workspace/nvlm_train

# Pin what the image ships (torch, TE, apex, flash-attn, triton, numpy, ...) so that no
# dependency resolution can replace them with generic PyPI wheels.
RUN pip list --format=freeze \
      | grep -iE '^(torch|torchvision|torchaudio|triton|pytorch-triton|transformer[-_]engine[-_a-z0-9]*|apex|flash[-_]attn|numpy|nvidia-[-_a-z0-9]+)==' \
      > /etc/nvlm-constraints.txt \
    && cat /etc/nvlm-constraints.txt \
    && python -c "import sys; assert sys.version_info >= (3, 11), sys.version"

# Dependencies first (cached until pyproject.toml changes): megatron-core at its pin, then the
# rest of pyproject's runtime + test dependencies except torch (the image's build is kept).
COPY pyproject.toml README.md ./
RUN pip install -c /etc/nvlm-constraints.txt "megatron-core==${MEGATRON_CORE_VERSION}" \
    && python -c "import re, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
reqs = p['dependencies'] + p['optional-dependencies']['test']; \
keep = [r for r in reqs if re.split(r'[<>=!~ ;\[]', r, maxsplit=1)[0].lower() not in ('torch', 'megatron-core')]; \
open('/tmp/nvlm-requirements.txt', 'w').write(chr(10).join(keep) + chr(10))" \
    && pip install -c /etc/nvlm-constraints.txt -r /tmp/nvlm-requirements.txt \
    && python -c "import importlib.util as u; assert u.find_spec('transformer_engine'), 'TE missing from the base image'"

# The package itself, editable: configs/ and data_recipes/ are read from this checkout.
# --no-deps: everything was installed above; the `gpu` extra (transformer-engine) is the image's.
COPY . .
RUN pip install -c /etc/nvlm-constraints.txt --no-deps --no-build-isolation -e . \
    && python -c "import megatron.core, nvlm_train; print('megatron-core', megatron.core.__version__)"

CMD ["bash"]
