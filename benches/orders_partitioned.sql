-- benches/orders_partitioned.sql: (re)creates public.orders_part, the partitioned benchmark
-- table of `benches/run.sh --partitioned`: the orders columns, range-partitioned by month on
-- created_at into 24 partitions (2024-01 .. 2025-12), primary key (id, created_at), an index on
-- customer_id defined on the parent; :rows rows spread evenly over the months (deterministic:
-- setseed). Drops what an earlier step left: the table and doppel's kept old tree.
-- psql variable: rows (number of rows).
\set ON_ERROR_STOP on
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.oid::regclass AS t
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind = 'p' AND NOT c.relispartition
              AND (c.relname = 'orders_part' OR c.relname LIKE '\_doppel\_%')
  LOOP
    EXECUTE format('DROP TABLE %s CASCADE', r.t);
  END LOOP;
END $$;
CREATE TABLE public.orders_part (
  id bigint NOT NULL, customer_id int NOT NULL, status text NOT NULL,
  amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL)
  PARTITION BY RANGE (created_at);
SELECT format('CREATE TABLE public.orders_part_%s PARTITION OF public.orders_part FOR VALUES FROM (%L) TO (%L)',
              to_char(m, 'YYYY_MM'), m, m + interval '1 month')
FROM generate_series(timestamptz '2024-01-01', timestamptz '2025-12-01', interval '1 month') m
\gexec
SELECT setseed(0.42);
INSERT INTO public.orders_part (id, customer_id, status, amount, note, created_at)
SELECT i, (random()*100000)::int, (ARRAY['pending','paid','shipped','refunded'])[1+(i%4)],
       (random()*1000)::numeric(12,2), md5(i::text) || md5((i*7)::text),
       timestamptz '2024-01-01' + (i % 730) * interval '1 day' + (i % 86400) * interval '1 second'
FROM generate_series(1, :rows) i;
ALTER TABLE public.orders_part ADD PRIMARY KEY (id, created_at);
CREATE INDEX orders_part_customer_idx ON public.orders_part (customer_id);
VACUUM ANALYZE public.orders_part;
CHECKPOINT;
