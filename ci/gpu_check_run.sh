#!/usr/bin/env bash
# The GPU check, run on the GPU machine from the folder ci/gpu-check built. Finds the CUDA
# libraries and headers of the pip wheels PyTorch brings, then:
#   0. compiles every kernel into the disk cache on all cores (warm_kernels);
#   1. every fixture op, VJP and JVP on the GPU against the CPU (the conformance test binary);
#   2. train_mlp --device cuda to its accuracy;
#   3. NCCL at world size 1 (libnccl.so.2 of the wheel, through our loader): in-place
#      all-reduce and broadcast of device tensors, and a group's gradient buckets through it;
#   4. the benchmark against PyTorch on the same GPU, as one table; then (4b) the fused
#      attention under each of its tunings (NABLA_ATTENTION_TUNING), one process each;
#   5. when step 0 found the stream-ordered pool, train_mlp again on the cached cuMemAlloc
#      allocator (NABLA_CUDA_ALLOCATOR=cached), the fallback where the pool does not work;
#   6. only with GPU_CHECK_PROFILE=1: Nsight Compute on the fused attention's kernels.
# Exit status: non-zero when a check fails (the table is printed either way).
#
# Each step's whole output goes to a log and only its tail is printed, so that the table,
# printed last, is never cut off. The logs are packed into $OUT/gpu-check-logs.tgz beside
# $OUT/table.md after every step (two files: the device tool brings back at most eight, and a
# killed run still brings back what was done), or stay in ./out when OUT is unset.
#
# Time: the whole check has a deadline (GPU_CHECK_SECONDS, default 300 s), so that a hung step
# still leaves a lent GPU's 15 minutes room for a second try. Each step runs under the smaller
# of its own limit and what is left; a step with under 10 s left is skipped and counted as a
# failure. Steps run in order of importance: conformance, training, NCCL, benchmark.
set -u
start_time=$(date +%s)
deadline=${GPU_CHECK_SECONDS:-300}
# left: seconds before the deadline.
left() { echo $((deadline - ($(date +%s) - start_time))); }
# limit MAX: the timeout for a step allowed MAX seconds (0 when it should be skipped).
limit() {
  local l
  l=$(left)
  if [ "$l" -lt 10 ]; then echo 0; elif [ "$l" -lt "$1" ]; then echo "$l"; else echo "$1"; fi
}
if [ -n "${OUT:-}" ]; then
  OUT=$(cd "$OUT" && pwd)
fi
cd "$(dirname "$0")"
# The binaries travel packed (the device tool carries 64 MiB with the working tree; unpacked
# they were 53 MiB): unpack them beside this script.
if [ -f bins.tar.gz ]; then
  tar xzf bins.tar.gz || { echo "gpu-check: FAILED: unpacking bins.tar.gz"; exit 1; }
fi
status=0
logs="$PWD/out"
rm -rf "$logs"
mkdir -p "$logs"
pack_logs() {
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu-check-logs.tgz" -C "$logs" .
    [ -f "$logs/table.md" ] && cp "$logs/table.md" "$OUT/"
  fi
  return 0
}
trap pack_logs EXIT
# logged NAME SECONDS CMD...: runs CMD (killed after SECONDS) with its output in
# $logs/NAME.log, prints the log's tail and returns CMD's status.
logged() {
  local name=$1 seconds
  seconds=$(limit "$2")
  shift 2
  if [ "$seconds" -eq 0 ]; then
    echo "(skipped: the check's $deadline s deadline has passed)"
    return 125
  fi
  timeout -k 5 "$seconds" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  tail -n 30 "$logs/$name.log"
  case $rc in
    0) ;;
    124 | 137) echo "(timed out after $seconds s, exit status $rc; whole log: $name.log)" ;;
    *) echo "(exit status $rc; whole log: $name.log)" ;;
  esac
  pack_logs
  return $rc
}
nv=$(python3 -c 'import os, nvidia; print(os.path.dirname(list(nvidia.__path__)[0]) + "/nvidia")' 2>/dev/null || true)
if [ -n "$nv" ] && [ -d "$nv" ]; then
  libs=$(find "$nv" -maxdepth 3 -type d -name lib | tr '\n' ':')
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
  # The headers beside the wheel's NVRTC first (cu13 layout), else any wheel's.
  if [ -f "$nv/cu13/include/cuda_fp16.h" ]; then
    inc="$nv/cu13/include"
  else
    inc=$(dirname "$(find "$nv" -name cuda_fp16.h | head -1)" 2>/dev/null || true)
  fi
  [ -n "$inc" ] && [ "$inc" != . ] && export NABLA_CUDA_INCLUDE="$inc"
fi
# cudarc asks the loader for the unversioned names (libnvrtc.so, libcublas.so) first, and the
# wheels ship only .so.13: without these links a system toolkit's copy could be loaded beside
# the wheel's other libraries. They go first on the path.
pin="$PWD/libpin"
rm -rf "$pin"
mkdir -p "$pin"
# Only CUDA 13's (the version cudarc is built for): with cu12 wheels beside them, a sort of
# paths could pick a .so.12.
for lib in libnvrtc libcublas libcublasLt; do
  found=$(find "${nv:-/nonexistent}" -name "$lib.so.13" 2>/dev/null | head -1)
  [ -n "$found" ] && ln -s "$found" "$pin/$lib.so"
done
export LD_LIBRARY_PATH="$pin:${LD_LIBRARY_PATH:-}"
export NABLA_KERNEL_CACHE="${NABLA_KERNEL_CACHE:-$PWD/kernel-cache}"
# NCCL says why it fails; one machine has only the loopback between its ranks.
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
[ -f BUILD ] && echo "== built from: $(cat BUILD)"
echo "== nvidia wheels: ${nv:-none}; headers: ${NABLA_CUDA_INCLUDE:-none}; pinned: $(ls "$pin" | tr '\n' ' ')"
# gVisor reports kernel 4.4.0: NCCL's cuMem buffers are not known to work there.
kernel=$(uname -r)
echo "== kernel $kernel"
case "$kernel" in 4.4.0*) export NCCL_CUMEM_ENABLE="${NCCL_CUMEM_ENABLE:-0}" ;; esac
timeout -k 2 8 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== 0. compile every kernel into the cache"
if ! logged warm_kernels 30 ./warm_kernels; then
  # Only the cache is missing: the steps below compile what they need themselves.
  echo "gpu-check: warning: warm_kernels did not finish"
fi

echo "== 1. conformance: every fixture op and derivative on cuda:0 against the CPU"
# Blocking launches: a kernel that faults is named by its own launch, not by a later read.
if ! CUDA_LAUNCH_BLOCKING=1 NABLA_GPU_CHECK=1 logged conformance 90 ./conformance --test-threads 1 --nocapture; then
  echo "gpu-check: FAILED: conformance"; status=1
fi

echo "== 2. train_mlp --device cuda"
# train NAME LABEL [VAR=VALUE...]: trains train_mlp --device cuda (with the variables set) to
# $logs/NAME.json and checks its accuracy, naming LABEL when it fails.
train() {
  local name=$1 label=$2 t
  shift 2
  t=$(limit 35)
  if [ "$t" -eq 0 ]; then
    echo "(skipped: the deadline has passed)"; status=1
  elif env "$@" timeout -k 5 "$t" ./train_mlp --device cuda --quiet --json > "$logs/$name.json" 2> "$logs/$name.log"; then
    cat "$logs/$name.json"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); a=r["test_accuracy"]; print("accuracy", a); sys.exit(0 if a >= 0.97 else 1)' "$logs/$name.json" \
      || { echo "gpu-check: FAILED: $label: accuracy below 97 %"; status=1; }
  else
    tail -n 30 "$logs/$name.log"
    echo "gpu-check: FAILED: $label"; status=1
  fi
  pack_logs
}
train train "train_mlp --device cuda"

echo "== 3. NCCL at world size 1"
if [ -z "${NABLA_NCCL_LIBRARY:-}" ] && [ -n "$nv" ] && [ -f "$nv/nccl/lib/libnccl.so.2" ]; then
  export NABLA_NCCL_LIBRARY="$nv/nccl/lib/libnccl.so.2"
fi
echo "NABLA_NCCL_LIBRARY=${NABLA_NCCL_LIBRARY:-unset, so the loader searches its path}"
for t in nccl_cuda nccl_dist; do
  if ! NABLA_GPU_CHECK=1 NABLA_NCCL_REQUIRED=1 logged "$t" 20 "./$t" --test-threads 1 --nocapture; then
    echo "gpu-check: FAILED: $t"; status=1
  fi
done

echo "== 4. benchmark against PyTorch (same GPU, same call)"
t=$(limit 50)
if [ "$t" -gt 0 ]; then
  timeout -k 5 "$t" ./gpu_bench > "$logs/ours.jsonl" 2> "$logs/gpu_bench.log" || { tail -n 30 "$logs/gpu_bench.log"; echo "gpu-check: FAILED: gpu_bench"; status=1; }
  grep -E "kernels:|libraries:|memory:" "$logs/gpu_bench.log"
else
  echo "(gpu_bench skipped: the deadline has passed)"; status=1
fi
t=$(limit 45)
if [ "$t" -gt 0 ]; then
  timeout -k 5 "$t" python3 gpu_bench_torch.py > "$logs/torch.jsonl" 2> "$logs/torch_bench.log" || { tail -n 30 "$logs/torch_bench.log"; echo "gpu-check: torch benchmark failed"; status=1; }
else
  echo "(torch benchmark skipped: the deadline has passed)"; status=1
fi
pack_logs

echo "== 4b. the fused attention's tunings (NABLA_ATTENTION_TUNING=LANE_BYTES,ROWS), one process each"
rm -f "$logs/tunings.jsonl"
for tuning in 128,1 64,1 32,1 128,2 64,2 32,2 32,4; do
  t=$(limit 20)
  [ "$t" -gt 0 ] || { echo "(tuning $tuning skipped: the deadline has passed)"; break; }
  NABLA_ATTENTION_TUNING=$tuning timeout -k 5 "$t" ./gpu_bench attention "tuning $tuning" >> "$logs/tunings.jsonl" 2>> "$logs/tunings.log" \
    || echo "gpu-check: attention tuning $tuning failed (see tunings.log)"
done
python3 - "$logs/tunings.jsonl" <<'PY' | tee "$logs/tunings.md"
import json, sys
rows = {}
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        label = r["system"].replace(" forward", "")
        rows.setdefault(label, {})["forward" if r["system"].endswith("forward") else "step"] = r["ms"]
print("| attention tuning (bytes a lane, rows a group) | forward ms | value and gradients ms |")
print("|---|---|---|")
for label, r in rows.items():
    print(f"| {label} | {r.get('forward', float('nan')):.3f} | {r.get('step', float('nan')):.3f} |")
PY
pack_logs

echo "== 5. train_mlp --device cuda on the other allocator"
if grep -q "memory: stream-ordered pool" "$logs/warm_kernels.log" 2>/dev/null; then
  train train_cached "train_mlp on the cached allocator" NABLA_CUDA_ALLOCATOR=cached
else
  echo "(step 0 did not report the stream-ordered pool, so steps 1-4 used what it chose:)"
  grep "memory:" "$logs/warm_kernels.log" 2>/dev/null || true
fi
pack_logs

# 6. With GPU_CHECK_PROFILE=1: Nsight Compute on the fused attention's three kernels (the
# default tuning; the launches after the 12 timed forwards: forward, backward over queries,
# backward over keys), clocks left alone; the whole report goes to ncu.log.
if [ "${GPU_CHECK_PROFILE:-0}" = 1 ]; then
  echo "== 6. Nsight Compute on the fused attention"
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  t=$(limit 90)
  if [ -z "$ncu_bin" ]; then
    echo "(no ncu on this machine)"
  elif [ "$t" -gt 0 ]; then
    timeout -k 5 "$t" "$ncu_bin" --clock-control none -k regex:nb_attention --launch-skip 12 --launch-count 3 \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      ./gpu_bench attention profiled > "$logs/ncu.log" 2>&1 || echo "(ncu exit status $?)"
    grep -E "nb_attention|Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Executed Ipc Active|Shared Memory|Stall|Block Limit" "$logs/ncu.log" | head -90
  fi
  pack_logs
fi
python3 - "$logs" <<'PY' | tee "$logs/table.md"
import json, os, sys
rows = {}
for path in (os.path.join(sys.argv[1], "ours.jsonl"), os.path.join(sys.argv[1], "torch.jsonl")):
    try:
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                rows.setdefault(r["case"], {})[r["system"]] = r["ms"]
    except FileNotFoundError:
        pass
def cell(v):
    return "-" if v is None else f"{v:.3f}"
print(f"| case | nabla-rs ms | nabla-rs jit ms | torch eager ms | best ours / torch |")
print("|---|---|---|---|---|")
for case in ["mlp_step_b128", "mlp_step_b4096", "add_2^28", "neg_2^28", "copy_2^28", "matmul_8192_f32", "matmul_8192_bf16",
             "attention_causal_16x8x1024x64", "batch_norm_32x64x56x56", "max_pool_32x64x112x112",
             "avg_pool_32x64x112x112"]:
    r = rows.get(case, {})
    ours = [v for k, v in r.items() if k in ("nabla-rs", "nabla-rs jit")]
    t = r.get("torch eager")
    ratio = f"{min(ours) / t:.2f}" if ours and t else "-"
    print(f"| {case} | {cell(r.get('nabla-rs'))} | {cell(r.get('nabla-rs jit'))} | {cell(t)} | {ratio} |")
att = rows.get("attention_causal_16x8x1024x64", {})
if att.get("nabla-rs") and att.get("nabla-rs composed"):
    print(f"attention: fused {att['nabla-rs']:.3f} ms, fused with a key padding mask {cell(att.get('nabla-rs masked'))} ms, "
          f"composed {att['nabla-rs composed']:.3f} ms (fused / composed {att['nabla-rs'] / att['nabla-rs composed']:.2f})")
if att.get("nabla-rs forward") and att.get("torch forward"):
    print(f"attention forward alone: fused {att['nabla-rs forward']:.3f} ms, torch {att['torch forward']:.3f} ms")
bn = rows.get("batch_norm_32x64x56x56", {})
if bn.get("nabla-rs") and bn.get("nabla-rs composed"):
    print(f"batch norm: fused {bn['nabla-rs']:.3f} ms, composed {bn['nabla-rs composed']:.3f} ms "
          f"(fused / composed {bn['nabla-rs'] / bn['nabla-rs composed']:.2f})")
n = 1 << 28
copy = rows.get("copy_2^28", {}).get("torch eager")
add = rows.get("add_2^28", {}).get("nabla-rs")
if copy and add:
    copy_bw = 2 * 4 * n / (copy * 1e-3) / 1e9
    add_bw = 3 * 4 * n / (add * 1e-3) / 1e9
    print(f"copy bandwidth (torch clone) {copy_bw:.0f} GB/s; our add moves {add_bw:.0f} GB/s = {100 * add_bw / copy_bw:.0f} % of it (target 80 %)")
for dt in ("f32", "bf16"):
    r = rows.get(f"matmul_8192_{dt}", {})
    if r.get("nabla-rs") and r.get("torch eager"):
        tflops = 2 * 8192 ** 3 / (r["nabla-rs"] * 1e-3) / 1e12
        print(f"matmul {dt}: {tflops:.1f} TFLOP/s, {r['torch eager'] / r['nabla-rs']:.2f}x torch's speed (target 0.9x)")
PY
echo "== gpu-check took $(( $(date +%s) - start_time )) s of its $deadline s (exit status $status)"
exit $status
