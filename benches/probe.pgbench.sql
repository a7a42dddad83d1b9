-- benches/probe.pgbench.sql: the write doppel's --max-write-latency probe makes (src/ops/pacing.rs),
-- run by benches/run.sh --pacing at doppel's rate (pgbench -R 10, one client) while only the
-- writer runs, to measure the idle probe latency the paced run's target is set from.
UPDATE bench_probe SET probes = probes + 1, at = clock_timestamp() WHERE table_oid = 1;
