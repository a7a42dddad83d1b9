-- benches/orders_generate.sql: the benchmark table orders (bigserial id, customer_id int, status,
-- amount numeric(12,2), note, created_at timestamptz; 10M rows by default), generated once per
-- benchmark run into bench.orders_pristine (deterministic: setseed). benches/orders_restore.sql
-- rebuilds public.orders from it before every timed operation.
-- psql variable: rows (number of rows).
\set ON_ERROR_STOP on
DROP SCHEMA IF EXISTS bench CASCADE;
CREATE SCHEMA bench;
SELECT setseed(0.42);
CREATE TABLE bench.orders_pristine (
  id bigint NOT NULL, customer_id int NOT NULL, status text NOT NULL,
  amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL);
INSERT INTO bench.orders_pristine (id, customer_id, status, amount, note, created_at)
SELECT i, (random()*100000)::int, (ARRAY['pending','paid','shipped','refunded'])[1+(i%4)],
       (random()*1000)::numeric(12,2), md5(i::text) || md5((i*7)::text),
       now() - (i || ' seconds')::interval
FROM generate_series(1, :rows) i;
VACUUM ANALYZE bench.orders_pristine;
