# How a run's file goes into the committed results; sourced by scripts/study.sh and scripts/reproduce_study.sh.
# A JSON result above COMPRESS_ABOVE bytes goes in gzip-compressed, as X.json.gz in place of X.json
# (src/rundir/results.py reads either, the plain file first, so the other form is removed).
COMPRESS_ABOVE=307200  # bytes

copy_result() {  # copy_result SRC DEST_DIR; with RUN_PREFIX set (e.g. a function that prints and runs), each
  # command goes through it
  local src="$1" dest="$2/$(basename "$1")"
  [ -f "$src" ] || return 0
  if [[ "$src" == *.json ]] && [ "$(stat -c %s "$src")" -gt "$COMPRESS_ABOVE" ]; then
    [ -f "$dest.gz" ] && [ ! -f "$dest" ] && [ "$dest.gz" -nt "$src" ] && return 0
    ${RUN_PREFIX:-} sh -c "gzip -n -c '$src' > '$dest.gz.tmp' && mv '$dest.gz.tmp' '$dest.gz' && rm -f '$dest'"
  else
    cmp -s "$src" "$dest" || ${RUN_PREFIX:-} cp "$src" "$dest"
    [ ! -f "$dest.gz" ] || ${RUN_PREFIX:-} rm -f "$dest.gz"
  fi
}
