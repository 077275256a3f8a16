#!/usr/bin/env bash
# The GPU benchmarks in one `device` call (the lent machine is bare and lent for minutes):
# the generation benchmark on 0.6B-Base (bfloat16, batches 1/4/16, both code-predictor loop
# forms, 16 rows of 2048-frame caches for memory) and on 1.7B-CustomVoice (batches 1/16), then
# the server load test on the 0.6B's converted weights.
#
# Here, once: carry the wheels the device image lacks (soundfile, soxr, websockets and their
# needs; flax/orbax as a fallback in .whl/fallback), see the device README:
#   echo /.whl/ >> .git/info/exclude; pip download --no-deps ... -d .whl websockets soxr soundfile cffi pycparser
# Then: run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=600); the parts are
# chosen with PARTS (default "gen gen17 memory load"; "profile" and "textstream" in further calls,
# as the whole exceeds one call's 10 minutes).
# Results land in $OUT (log, generation_gpu.json, memory.json, load.json). On an H100 it took about
# 300 s for generation, 20 s for memory and 45 s for the load test (whose server warm-up compiles
# every span: it missed a 150 s ready limit without the compilation cache, then took 40 s with it).
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
# Everything the benchmarks build stays in the working tree: QWEN3TTS_JAX_CACHE is the one root.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 QWEN3TTS_JAX_CACHE=$PWD/.cache JAX_COMPILATION_CACHE_DIR=$PWD/.cache/xla
CKPT=$PWD/.cache/benchmarks/real-0.6b-native-hf-jax-bfloat16
exec > >(tee "$OUT/log") 2>&1
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
# The project itself, installed so that qwen3tts_jax.convert and qwen3tts_jax.server resolve
# (they live in convert/ and server/ and exist under that name only once installed).
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site:$PWD
if ! python3 -c "import flax, sys; sys.exit(tuple(map(int, flax.__version__.split('.')[:2])) < (0, 12))"; then
    echo "image flax too old: using the carried flax/orbax"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/fallback/*.whl
fi
python3 -c "import jax, flax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

has() { case " ${PARTS:-gen gen17 memory load} " in *" $1 "*) return 0;; esac; return 1; }

if has gen; then
timeout "${GEN_TIMEOUT:-300}" python3 benchmarks/generation.py --native --frames 32 --batch ${BATCHES:-1 16 64 4} \
    --dtypes ${DTYPES:-bfloat16} --both-loops --long-batch --active-slots ${ACTIVE_SLOTS:-64} --name generation_gpu
cp benchmarks/results/generation_gpu.json "$OUT/" 2>/dev/null
echo "generation (0.6B-Base) done at +$(( $(date +%s) - start )) s"
fi

# The 1.7B (CustomVoice: the field's most benchmarked model), batch 1 and 16, in the same call.
if has gen17; then
timeout "${GEN17_TIMEOUT:-240}" python3 benchmarks/generation.py --native --model 1.7b-custom-voice --frames 32 \
    --batch ${BATCHES17:-1 16 64} --dtypes ${DTYPES:-bfloat16} --name generation_gpu_1.7b_cv
cp benchmarks/results/generation_gpu_1.7b_cv.json "$OUT/" 2>/dev/null
echo "generation (1.7B-CustomVoice) done at +$(( $(date +%s) - start )) s"
fi

# The memory target in a fresh process: the generation run's peak includes building the checkpoint.
if has memory; then
timeout 150 python3 benchmarks/memory.py "$CKPT" --rows 16 --max-seq-len 2048 \
    | tee "$OUT/memory.json"
fi

if has load; then
timeout "${LOAD_TIMEOUT:-320}" python3 benchmarks/load.py --spawn --model "$CKPT" \
    --dtype bfloat16 --batch-slots 16 --clients 16 --requests 2 --max-frames 100 --load-timeout 270 \
    --tag gpu-0.6b-bf16-16 --out "$OUT/load.json"
cp benchmarks/results/load-server.log.tmp "$OUT/server.log" 2>/dev/null
fi

# Streamed text input (speak textStream / appendText / endText) on the same weights: pieces at
# 20/50/100 per second and in bursts, 1 and 16 sessions, the default (ICL) and an x-vector voice,
# beside whole-text speaks: PARTS=textstream (not in the default PARTS). Converts the weights
# itself when the gen part has not run in this call.
if has textstream; then
[ -d "$CKPT" ] || (cd benchmarks && timeout 200 python3 -c "from common import converted, full_size_checkpoint
converted(full_size_checkpoint(native=True), 'bfloat16')")
timeout "${TEXTSTREAM_TIMEOUT:-420}" python3 benchmarks/text_stream.py --spawn --model "$CKPT" --dtype bfloat16 \
    --batch-slots 16 --sessions 1 16 --rates 20 50 100 --requests 2 --load-timeout 270 \
    --tag gpu-0.6b-bf16 --out "$OUT/text_stream.json" | tee "$OUT/text_stream.md"
cp benchmarks/results/text-stream-server.log.tmp "$OUT/text_stream_server.log" 2>/dev/null
fi

# Where the frame step's time goes (kernel count, kernel time, gaps) at batch 1 and 16, with
# XLA's command buffers as the image has them and then off: PARTS=profile in a call of its own.
if has profile; then
timeout 200 python3 benchmarks/profile_step.py --native --batch 1 16 --out "$OUT/trace" --name profile_gpu
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" timeout 200 python3 benchmarks/profile_step.py \
    --native --batch 1 16 --out "$OUT/trace-no-cmdbuf" --name profile_gpu_no_cmdbuf
cp benchmarks/results/profile_gpu*.json "$OUT/" 2>/dev/null
fi
# Open-loop load (Poisson arrivals, a new session per request; BENCHMARKS.md) on the 0.6B-Base
# and the 1.7B-CustomVoice, 1-64 requests per second, then a short soak on the 0.6B:
# PARTS=openloop (both models; OL_MODELS="0.6b" or "1.7b" for one per call if time is short) and
# PARTS=soak, neither in the default. Each model's sweep is the server's warm-up (40-150 s) plus
# 7 rates x (OL_WARMUP + OL_DURATION + drain) s; a missing converted checkpoint is built first
# (random weights at the released sizes, as the gen/gen17 parts build them).
ckpt_for() {  # 0.6b | 1.7b -> the converted bfloat16 folder, built if missing
    local name=0.6b-base; [ "$1" = 1.7b ] && name=1.7b-custom-voice
    python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from common import converted, full_size_checkpoint; \
print(converted(full_size_checkpoint('$name', native=True), 'bfloat16'))" | tail -n 1
}
if has openloop; then
for m in ${OL_MODELS:-0.6b 1.7b}; do
    ck=$(ckpt_for "$m")
    timeout "${OL_TIMEOUT:-420}" python3 benchmarks/load.py --spawn --model "$ck" --dtype bfloat16 \
        --batch-slots "${OL_SLOTS:-16}" --max-sessions 1024 --load-timeout 270 --open-loop \
        --rps ${OL_RPS:-1 2 4 8 16 32 64} --duration "${OL_DURATION:-20}" --warmup-s "${OL_WARMUP:-5}" \
        --slo-ms "${OL_SLO_MS:-200}" --drain-timeout 60 --tag "gpu-$m-bf16" --out "$OUT/openloop-$m.json" \
        | tail -n 12
    cp benchmarks/results/load-server.log.tmp "$OUT/server-openloop-$m.log" 2>/dev/null
    echo "open loop ($m) done at +$(( $(date +%s) - start )) s"
done
fi
if has soak; then
timeout "${SOAK_TIMEOUT:-400}" python3 benchmarks/soak.py --model "$(ckpt_for 0.6b)" --dtype bfloat16 \
    --batch-slots 16 --workers "${SOAK_WORKERS:-32}" --duration "${SOAK_DURATION:-240}" --sample-every 30 \
    --load-timeout 270 --tag gpu-0.6b-bf16 --out "$OUT/soak.json" | tail -n 14
cp benchmarks/results/soak-server.log.tmp "$OUT/server-soak.log" 2>/dev/null
echo "soak done at +$(( $(date +%s) - start )) s"
fi
echo "all done at +$(( $(date +%s) - start )) s"
