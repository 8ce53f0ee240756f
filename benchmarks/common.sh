# Shared by the training scripts of benchmarks/ (source it). Needs RUN (the run folder root).
# step NAME ARGS...: `dynvit finetune ARGS --out RUN/NAME`, resuming a started run; skipped when the
# run's log reaches $EPOCHS epochs.
step() {
  local out="$RUN/$1"; shift
  if [ -f "$out/train_state.safetensors" ]; then
    python -c "import json,sys; h=[json.loads(l) for l in open('$out/log.jsonl')]; sys.exit(0 if h and h[-1]['epoch'] >= $EPOCHS else 1)" 2>/dev/null \
      && { echo "$out: done"; return; }
    dynvit finetune "$@" --out "$out" --resume
  else
    dynvit finetune "$@" --out "$out"
  fi
}
