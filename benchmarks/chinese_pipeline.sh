#!/usr/bin/env bash
# The whole pipeline on Chinese Wikipedia: tokenizer, prepare, a short pretraining run, detect.
#   bash benchmarks/chinese_pipeline.sh [OUT] [STEPS]
set -euo pipefail
OUT=${1:-bench-runs/zh}
STEPS=${2:-300}
ZH=$(cd "$(dirname "$0")/../.." && pwd)/shared/data/zh/wiki
E=.venv/bin/electra
mkdir -p "$OUT"
$E tokenizer train --corpus "$ZH" --vocab-size 21128 --out "$OUT/tok"
$E prepare --corpus "$ZH" --tokenizer "$OUT/tok" --out "$OUT/data" --seq-len 128 --overwrite
$E pretrain --data "$OUT/data" --model tiny --out "$OUT/run" --max-steps "$STEPS" --batch-size 32 \
  --save-every "$STEPS" --eval-every 100 --resume
$E detect --model "$OUT/run" "北京是中华人民共和国的首都，也是全国的政治中心。"
$E detect --model "$OUT/run" "北京是中华人民共和国的首都，也是全国的香蕉中心。"
$E fill-mask --model "$OUT/run" "北京是中华人民共和国的首[MASK]。"
