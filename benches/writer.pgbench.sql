-- benches/writer.pgbench.sql: the steady mixed write load of benches/run.sh (pgbench -R).
-- Per transaction: an UPDATE of a random existing row by primary key, an INSERT, and in one
-- transaction out of ten a DELETE of the updated row (about 2.1 row changes per transaction).
-- pgbench variable: rows (rows in the generated table).
\set id random(1, :rows)
\set cid random(1, 100000)
\set r random(1, 10)
BEGIN;
UPDATE orders SET amount = amount + 1, status = 'paid' WHERE id = :id;
INSERT INTO orders (customer_id, status, amount, note) VALUES (:cid, 'pending', 19.99, md5(:id::text));
\if :r = 1
DELETE FROM orders WHERE id = :id;
\endif
END;
