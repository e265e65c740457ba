-- oltp-churn.sql: the pgbench script (-f) that changes the "oltp" dataset between a full and an incremental
-- backup in `strata-bench incr` (DATASET=oltp), the counterpart of pgbench's built-in TPC-B run on the pgbench
-- dataset. pgbench -D ncust=<customers> -D norders=<orders at load time>. Every transaction logs one event; then:
--   45%: a new order of 1 to 5 lines, and the customer's balance is charged
--   40%: a random existing order changes status
--   15%: a random customer's city, notes and balance change
-- Updates hit random pages of customers and orders (and their indexes: the tables are full, so updates are not
-- HOT); inserts append to orders, order_lines and events and hit random pages of the secondary indexes.
\set cid random(1, :ncust)
\set oid random(1, :norders)
\set r random(1, 100)
\set nlines random(1, 5)
\set amount random(100, 50000)
BEGIN;
\if :r <= 45
INSERT INTO orders (id, customer_id, status, created_at, updated_at, total, currency, ship_to, note)
    VALUES (nextval('orders_id_seq'), :cid, 'new', now(), now(), :amount / 100.0, 'EUR',
            (1 + (random() * 999)::int) || ' ' || initcap(oltp_text(2, 40)), oltp_text(6, 60))
    RETURNING id AS new_order \gset
INSERT INTO order_lines (order_id, line_no, product_id, sku, quantity, unit_price, discount, description)
    SELECT :new_order, l, p, 'SKU-' || upper(substr(md5(p::text), 1, 10)), 1 + (random()^3 * 20)::int,
           round((1 + random() * 200)::numeric, 2), 0, left(initcap(oltp_text(1, 12)) || ' ' || oltp_text(11, 160), 30 + (random() * 130)::int)
    FROM generate_series(1, :nlines) l, LATERAL (SELECT 1 + (999999 * random())::int + 0 * l AS p) pp;
UPDATE customers SET balance = balance - :amount / 100.0 WHERE id = :cid;
\set kind 1
\elif :r <= 85
UPDATE orders SET status = (ARRAY['paid','shipped','delivered','cancelled','returned'])[1 + (4 * random())::int],
                  updated_at = now()
    WHERE id = :oid;
\set kind 2
\else
UPDATE customers SET city = initcap(oltp_text(1, 20)), notes = oltp_text(8, 80),
                     balance = balance + :amount / 100.0
    WHERE id = :cid;
\set kind 3
\endif
INSERT INTO events (id, customer_id, kind, created_at, payload)
    VALUES (nextval('events_id_seq'), :cid, (ARRAY['checkout', 'view', 'login'])[:kind], now(),
            jsonb_build_object('session', md5(random()::text), 'request_id', md5(random()::text),
                'ip', (random() * 223)::int || '.' || (random() * 255)::int || '.' || (random() * 255)::int || '.' || (random() * 255)::int,
                'ua', 'Mozilla/5.0 (X11; Linux x86_64)', 'path', '/' || replace(oltp_text(2, 30), ' ', '/'),
                'query', oltp_text(5, 60), 'amount', :amount / 100.0, 'items', :nlines,
                'device', substr(md5(random()::text), 1, 16), 'ok', true, 'tags', jsonb_build_array(oltp_text(1, 12))));
END;
