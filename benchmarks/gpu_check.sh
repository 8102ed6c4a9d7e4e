#!/usr/bin/env bash
# One-table GPU check (<= 8 min on one GPU): search step vs NNI (when installed), PGD and
# HopSkipJump vs ART on CIFAR-size victims, bf16 vs fp32 PGD ASR agreement, the smoke audit's
# wall time, and peak memory (GPU: torch's max allocated per benchmark and nvidia-smi's
# device-wide peak; CPU: peak RSS of each step).
#
#   benchmarks/gpu_check.sh                         # on the GPU machine
#   NNI_PYTHON=/path/nni-venv/bin/python benchmarks/gpu_check.sh
#   benchmarks/gpu_check.sh --tiny                  # CPU, tiny sizes, < 60 s (CI runs this)
#
# Env: PYTHON (default: python), NNI_PYTHON (default: $PYTHON), DEVICE (default: auto),
# OUT (work directory; default: a temporary one, removed at the end).
set -euo pipefail
TINY=0
[[ "${1:-}" == "--tiny" ]] && TINY=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-python}"
NNI_PYTHON="${NNI_PYTHON:-$PYTHON}"
DEVICE="${DEVICE:-auto}"
OUT="${OUT:-$(mktemp -d -t nasaudit-gpu-check-XXXXXX)}"
[[ -z "${KEEP_OUT:-}" && "$OUT" == /tmp/* ]] && trap 'rm -rf "$OUT"' EXIT
mkdir -p "$OUT"

if [[ $TINY == 1 ]]; then
  SEARCH_ARGS=(--C 4 --layers 3 --batch-size 8 --steps 1)
  ATTACK_ARGS=(--tiny)
  # The full smoke audit takes minutes: tiny mode only plans it (config, models, units).
  AUDIT=(audit "$REPO/experiments/smoke_cifar10.toml" --dry-run --out "$OUT/audit")
  AUDIT_LABEL="smoke audit --dry-run (tiny mode: planned, not run)"
else
  SEARCH_ARGS=(--steps 3 --warmup 2)
  ATTACK_ARGS=()
  AUDIT=(audit "$REPO/experiments/smoke_cifar10.toml" --no-progress --out "$OUT/audit")
  AUDIT_LABEL="smoke audit (experiments/smoke_cifar10.toml)"
fi

NVSMI_PID=""
if command -v nvidia-smi >/dev/null 2>&1 && [[ $TINY == 0 ]]; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/nvsmi.txt" &
  NVSMI_PID=$!
fi

# step NAME CMD...: run CMD, record wall seconds and peak child RSS (MiB) in $OUT/NAME.time
step() {
  local name=$1; shift
  "$PYTHON" - "$OUT/$name.time" "$@" <<'PY'
import json, resource, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
rc = subprocess.call(cmd)
json.dump({"seconds": time.perf_counter() - start, "rc": rc,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}, open(out, "w"))
sys.exit(rc)
PY
}

cd "$REPO"
step search "$PYTHON" benchmarks/search_step.py --rows none --device "$DEVICE" --nni-python "$NNI_PYTHON" \
  --json "$OUT/search.json" "${SEARCH_ARGS[@]}"
step attacks "$PYTHON" benchmarks/attacks.py --cifar --bf16 --device "$DEVICE" --json "$OUT/attacks.json" \
  "${ATTACK_ARGS[@]}"
step audit "$PYTHON" -m nasaudit "${AUDIT[@]}" --device "$DEVICE"
[[ -n "$NVSMI_PID" ]] && kill "$NVSMI_PID" 2>/dev/null || true

"$PYTHON" - "$OUT" "$AUDIT_LABEL" <<'PY'
import json, sys
from pathlib import Path
out, audit_label = Path(sys.argv[1]), sys.argv[2]
load = lambda name: json.loads((out / name).read_text())
search, attacks = load("search.json"), load("attacks.json")
t = {k: load(f"{k}.time") for k in ("search", "attacks", "audit")}
rows = []
c = search["compared"]
ours, nni = c["ours"], c.get("nni")
line = f"{ours['images_per_s']:.1f} img/s, {ours.get('gflop_per_s', 0):.1f} GFLOP/s, peak {ours['peak_mb']:.0f} MiB"
if nni and "error" not in nni:
    line += (f"; NNI {nni['images_per_s']:.1f} img/s, peak {nni['peak_mb']:.0f} MiB; ratio "
             f"{ours['images_per_s'] / nni['images_per_s']:.2f}x speed, {ours['peak_mb'] / nni['peak_mb']:.2f}x memory")
else:
    line += f"; NNI: {(nni or {}).get('error') or search.get('nni_status') or 'not run'}"
rows.append(("search step (first order, n_step 1)", line))
for v in attacks["victims"]:
    name = v["victim"].split(" (")[0]
    rows.append((f"PGD vs ART, {name}", f"{v['pgd']['ratio']:.2f}x ({v['pgd']['ours']:.0f} vs {v['pgd']['art']:.0f} input-it/s)"))
    rows.append((f"PGD attack (early stop) vs ART, {name}", f"{v['pgd_attack']['ratio']:.2f}x"))
    rows.append((f"targeted PGD vs ART, {name}", f"{v['pgd_targeted']['ratio']:.2f}x"))
    rows.append((f"HopSkipJump vs ART, {name}", f"{v['hsj']['ratio']:.2f}x"))
    if "bf16" in v:
        b = v["bf16"]
        rows.append((f"bf16 vs fp32 PGD ASR, {name}",
                     f"fp32 {b['asr_fp32']:.3f}, bf16 {b['asr_bf16']:.3f}, agreement {b['agreement']:.3f}"))
rows.append((audit_label, f"{t['audit']['seconds']:.0f} s wall (exit {t['audit']['rc']})"))
peak = ", ".join(f"{k} {t[k]['peak_rss_mb']:.0f}" for k in t)
rows.append(("peak host RSS (MiB)", peak))
nv = out / "nvsmi.txt"
if nv.exists() and nv.read_text().split():
    rows.append(("peak GPU memory (nvidia-smi)", f"{max(int(x) for x in nv.read_text().split())} MiB"))
rows.append(("device / wall", f"{attacks['device']}; benchmarks {sum(x['seconds'] for x in t.values()):.0f} s"))
w = max(len(k) for k, _ in rows)
print("\n" + "=" * (w + 60))
for k, v in rows:
    print(f"{k:<{w}}  {v}")
print("=" * (w + 60))
sys.exit(max(x["rc"] for x in t.values()))
PY
