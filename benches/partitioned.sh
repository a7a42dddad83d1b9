# benches/partitioned.sh: the partitioned case of benches/run.sh (`--partitioned`, issue 15),
# sourced by run.sh once its private cluster is up (it uses run.sh's q, now, elapsed, ratio,
# log, die, time_sql, replaced_section, $DOPPEL, $DSN, $WORK, $ROWS, $OUT_MD, $DO_WRITE). On
# public.orders_part ($ROWS rows in 24 monthly partitions, benches/orders_partitioned.sql),
# each on a freshly generated tree:
#   a. the locking ALTER TABLE orders_part ALTER COLUMN customer_id TYPE bigint (rewrites every
#      partition under ACCESS EXCLUSIVE on the whole tree)
#   d. doppel run --execute, same ALTER: wall time, per-phase times, cutover lock hold
# then prints the ratio and writes the section "partitioned rows=N" of BENCHMARKS.md.

part_generate() {
  local t0
  t0=$(now)
  "$PSQL" -X -q -v rows="$ROWS" -f "$HERE/orders_partitioned.sql" >>"$WORK/sql.out" 2>&1 \
    || { tail -n 5 "$WORK/sql.out" >&2; die "generating public.orders_part failed"; }
  log "  public.orders_part generated ($(elapsed "$t0" "$(now)") s)"
}

declare -A P
log "partitioned: $ROWS rows in 24 monthly partitions (public.orders_part)"
part_generate
P[size]=$(q "SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) FROM pg_partition_tree('public.orders_part')")
log "a. locking ALTER TABLE on the partitioned table"
P[alter]=$(time_sql "ALTER TABLE public.orders_part ALTER COLUMN customer_id TYPE bigint")
log "  ${P[alter]} s"
part_generate
log "d. doppel run on the partitioned table"
t0=$(now)
if ! NO_COLOR=1 "$DOPPEL" run --dsn "$DSN" --table public.orders_part \
    --alter "ALTER COLUMN customer_id TYPE bigint" --execute --no-history \
    --progress lines --status-interval 1 --work-dir "$WORK" --rollback-dir "$WORK" \
    >"$WORK/doppel_part.out" 2>"$WORK/doppel_part.err"; then
  tail -n 20 "$WORK/doppel_part.out" "$WORK/doppel_part.err" >&2
  die "doppel run (partitioned) failed"
fi
P[doppel]=$(elapsed "$t0" "$(now)")
P[lock_ms]=$(sed -nE 's/^cutover: lock held ([0-9.]+) ms.*/\1/p' "$WORK/doppel_part.out")
P[phases]=$(sed -nE 's/^  ([a-z][a-z +-]*[a-z]) +([0-9.]+) s$/\1 \2 s/p' "$WORK/doppel_part.out" | paste -sd ';' | sed 's/;/; /g')
P[ratio]=$(ratio "${P[doppel]}" "${P[alter]}")
log "  ${P[doppel]} s (${P[ratio]}x the ALTER), lock held ${P[lock_ms]} ms"

MD="$WORK/section_part.md"
{
  echo "<!-- run.sh partitioned rows=$ROWS begin -->"
  echo "## Partitioned table: $ROWS rows in 24 partitions"
  echo
  echo "\`$INVOCATION\` at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ), PostgreSQL $PG_VERSION, $(nproc) cores, load average at start $LOAD_START."
  echo "public.orders_part (orders' columns, range-partitioned by month on created_at, 24 partitions,"
  echo "primary key (id, created_at), an index on customer_id on the parent; ${P[size]} with indexes),"
  echo "\`ALTER COLUMN customer_id TYPE bigint\`, each on a freshly generated tree:"
  echo
  echo "| | seconds | vs ALTER |"
  echo "|---|---:|---:|"
  echo "| locking ALTER TABLE on the parent (ACCESS EXCLUSIVE on the tree throughout) | ${P[alter]} | 1.00 |"
  echo "| doppel run (idle) | ${P[doppel]} | ${P[ratio]} |"
  echo
  echo "doppel's phases: ${P[phases]}. Cutover lock held ${P[lock_ms]} ms (the parent, 24 partitions and"
  echo "their indexes renamed in one transaction)."
  echo "<!-- run.sh partitioned rows=$ROWS end -->"
} >"$MD"
cat "$MD"
if [[ $DO_WRITE -eq 1 ]]; then
  begin="<!-- run.sh partitioned rows=$ROWS begin -->"
  end="<!-- run.sh partitioned rows=$ROWS end -->"
  if grep -qF "$begin" "$OUT_MD"; then
    replaced_section "$begin" "$end" "$MD" >"$WORK/bench.md.new"
    cat "$WORK/bench.md.new" >"$OUT_MD"
  else
    { echo; cat "$MD"; } >>"$OUT_MD"
  fi
  log "wrote ${OUT_MD#"$ROOT"/} (section partitioned rows=$ROWS)"
fi
log "done"
