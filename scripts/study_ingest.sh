#!/usr/bin/env bash
# Brings what a study group made on a remote GPU machine into this checkout: the files that
# `bash scripts/study_detached.sh wait SECONDS DIR` copied into DIR there and that were brought back here.
#   bash scripts/study_ingest.sh DIR
#       DIR/results.tgz: every seed directory <config>/seed<S>/ in it whose run and battery are complete
#       (summary.json and battery.json, or battery.json.gz) is copied to RESULTS/<config>/seed<S>/; a seed
#       already in RESULTS is kept as it is and never overwritten, and an incomplete one is skipped (its group
#       had not finished when the files were copied).
#       DIR/models.tar.part_* (optional): joined and unpacked; each export <config>/ with a model.safetensors
#       is copied to MODELS/<config>/ unless MODELS/<config>/ is already there.
#   Then, for the tests and figures: python -m src.report.study --partial (without --partial once every
#   seed is in).
#   RESULTS (default results/study), MODELS (default models).
# Exit status 0, or 2 with a line that says what is wrong (no DIR, no results.tgz, an archive that does not
# unpack, an archive with no study results in it).
set -u
cd "$(dirname "$0")/.." || exit 1
RESULTS="${RESULTS:-results/study}"; MODELS="${MODELS:-models}"

fail() { echo "study_ingest.sh: $*" >&2; exit 2; }

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") usage >&2; fail "give DIR, the folder 'scripts/study_detached.sh wait SECONDS DIR' filled" ;;
esac
dir="$1"
[ -d "$dir" ] || fail "$dir is not a directory; give the DIR that 'scripts/study_detached.sh wait SECONDS DIR' filled"
[ -f "$dir/results.tgz" ] || fail "$dir/results.tgz not found; 'scripts/study_detached.sh wait SECONDS DIR' writes it"

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/results" "$tmp/models"
tar xzf "$dir/results.tgz" --no-same-owner -C "$tmp/results" 2>"$tmp/err" \
  || fail "$dir/results.tgz does not unpack ($(head -n 1 "$tmp/err")); copy it again"

complete() { [ -f "$1/summary.json" ] && { [ -f "$1/battery.json" ] || [ -f "$1/battery.json.gz" ]; }; }

found=0; added=0
# the archive holds one folder (RESULTS on the machine that made it) with <config>/seed<S>/ inside
for src in "$tmp"/results/*/*/seed*/; do
  [ -d "$src" ] || continue
  src="${src%/}"; seed="$(basename "$src")"; config="$(basename "$(dirname "$src")")"
  [[ "$seed" =~ ^seed[0-9]+$ && "$config" =~ ^[A-Za-z0-9_.-]+$ ]] || continue
  found=$((found + 1))
  dest="$RESULTS/$config/$seed"
  if [ -e "$dest/summary.json" ]; then
    echo "kept:    $dest (already here; not overwritten)"
  elif ! complete "$src"; then
    echo "skipped: $config/$seed (no summary.json or no battery.json: its group had not finished)"
  else
    mkdir -p "$dest" && cp -p "$src"/* "$dest"/ || fail "could not copy $config/$seed into $dest"
    echo "added:   $dest ($(ls "$dest" | wc -l) files)"
    added=$((added + 1))
  fi
done
[ "$found" -gt 0 ] || fail "$dir/results.tgz holds no <config>/seed<S>/ directory; is it a study's results.tgz?"

parts=("$dir"/models.tar.part_*)
if [ -f "${parts[0]}" ]; then
  cat "${parts[@]}" | tar xf - --no-same-owner -C "$tmp/models" 2>"$tmp/err" \
    || fail "models.tar.part_* in $dir do not unpack ($(head -n 1 "$tmp/err")); copy every part again"
  for src in "$tmp"/models/*/*/; do
    src="${src%/}"; config="$(basename "$src")"
    [ -f "$src/model.safetensors" ] || continue
    if [ -e "$MODELS/$config" ]; then
      echo "kept:    $MODELS/$config (already here; not overwritten)"
    else
      mkdir -p "$MODELS" && cp -rp "$src" "$MODELS/$config" || fail "could not copy the export $config into $MODELS"
      echo "added:   $MODELS/$config"
    fi
  done
fi
echo "study_ingest.sh: $added seed(s) added to $RESULTS; next: python -m src.report.study --partial"
