-- benches/orders_restore.sql: (re)creates public.orders as orders_generate.sql defines it
-- (bigserial PK, indexes on customer_id and created_at), from bench.orders_pristine.
-- Drops what earlier steps left: orders, doppel's kept old table, the floor copy.
\set ON_ERROR_STOP on
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.oid::regclass AS t
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind = 'r'
              AND (c.relname = 'orders' OR c.relname LIKE '\_doppel\_%' OR c.relname = 'floor_copy')
  LOOP
    EXECUTE format('DROP TABLE %s CASCADE', r.t);
  END LOOP;
END $$;
DROP SEQUENCE IF EXISTS public.orders_id_seq;
CREATE TABLE public.orders (
  id bigserial, customer_id int NOT NULL, status text NOT NULL,
  amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL DEFAULT now());
-- Copy in physical (= id) order: a synchronized scan could start mid-table.
SET synchronize_seqscans = off;
INSERT INTO public.orders SELECT * FROM bench.orders_pristine;
ALTER TABLE public.orders ADD PRIMARY KEY (id);
CREATE INDEX orders_customer_idx ON public.orders(customer_id);
CREATE INDEX orders_created_idx ON public.orders(created_at);
SELECT setval('public.orders_id_seq', (SELECT max(id) FROM public.orders));
VACUUM ANALYZE public.orders;
CHECKPOINT;
