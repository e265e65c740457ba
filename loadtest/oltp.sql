-- oltp.sql: the "oltp" dataset of loadtest/ (DATASET=oltp): an OLTP table mix that zstd -1 compresses about
-- 2.3x (pgbench's tables compress about 40x), built with server-side SQL. Run by strata-bench and the scale model
-- (loadtest/src/dataset.rs) with psql, in four steps selected by psql variables (each 0 or 1), two of them in parallel sessions:
--
--   psql -v ncust=N -v schema=1 -v part1=0 -v part2=0 -v finish=0 -f oltp.sql   -- tables, words, functions
--   psql -v ncust=N -v schema=0 -v part1=1 -v part2=0 -v finish=0 -f oltp.sql   -- customers, orders  } at once
--   psql -v ncust=N -v schema=0 -v part1=0 -v part2=1 -v finish=0 -f oltp.sql   -- order_lines, events }
--   psql -v ncust=N -v schema=0 -v part1=0 -v part2=0 -v finish=1 -f oltp.sql   -- sequences, VACUUM (FREEZE, ANALYZE)
--
-- Rows per customer: 6 orders, 1 to 5 lines per order (3 on average), 4 events; about 7.9 kB of database per
-- customer (tables and indexes), so ncust = 187,600 gives about 1.5 GB.
--
-- Text is made of words drawn uniformly from 65,536 random lower-case words of 2 to 12 letters (oltp_words),
-- plus md5 hex strings (sessions, request ids, devices, SKUs), so it is not repeated strings; ids are dense,
-- timestamps follow the ids with random jitter, amounts are random. With zstd -1: customers ~1.85x, orders
-- ~2.0x, order_lines ~1.76x, events (jsonb) ~2.6x, the indexes 3.1x (random keys) to 6.7x (sequential keys);
-- the whole database ~2.3x (2.2x in the backups of a 1.5 GB load).
--
-- Words are picked from an array computed once per statement (an InitPlan: `words || '{}'` makes it a plain
-- in-memory value; indexing the stored, TOASTed array would detoast it at every access). `name` elements are
-- fixed-length, so w[i] is O(1).
\set ON_ERROR_STOP on
SET jit = off;
SET synchronous_commit = off;
SET maintenance_work_mem = '256MB';
-- W: one random word; WS: four
\set W 'w[1 + (65535 * random())::int]'
\set WS ':W || '' '' || :W || '' '' || :W || '' '' || :W'

\if :schema
DROP TABLE IF EXISTS events, order_lines, orders, customers, oltp_words CASCADE;
DROP SEQUENCE IF EXISTS customers_id_seq, orders_id_seq, events_id_seq;
DROP FUNCTION IF EXISTS oltp_text(int, int);
CREATE TABLE oltp_words (id int PRIMARY KEY, w text NOT NULL);
INSERT INTO oltp_words
SELECT i, substr(regexp_replace(encode(decode(md5(i::text) || md5((-i)::text), 'hex'), 'base64'), '[^a-z]', '', 'g'),
              1, 2 + (i * 7 % 9) + (i % 3))
FROM generate_series(1, 65536) i;
CREATE TABLE customers (
    id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, phone text, city text, country char(2),
    created_at timestamptz NOT NULL, balance numeric(12,2) NOT NULL, status smallint NOT NULL, notes text);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL, created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL, total numeric(12,2) NOT NULL, currency char(3) NOT NULL, ship_to text,
    note text);
CREATE TABLE order_lines (
    order_id bigint NOT NULL, line_no smallint NOT NULL, product_id int NOT NULL, sku text NOT NULL,
    quantity int NOT NULL, unit_price numeric(10,2) NOT NULL, discount numeric(4,2) NOT NULL, description text,
    PRIMARY KEY (order_id, line_no));
CREATE TABLE events (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL, kind text NOT NULL, created_at timestamptz NOT NULL,
    payload jsonb NOT NULL);
-- oltp_text(N, MAXLEN): N random words, cut to MAXLEN characters (the churn's text; the load inlines the same).
CREATE FUNCTION oltp_text(nwords int, maxlen int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t text := '';
    k int;
    x text;
BEGIN
    FOR i IN 1..nwords LOOP
        k := 1 + (65535 * random())::int; -- a variable, not random() in the WHERE: an index lookup, not a scan
        SELECT w INTO x FROM oltp_words WHERE id = k;
        t := t || x || ' ';
    END LOOP;
    RETURN left(rtrim(t), maxlen);
END $$;
\endif

\if :part1
INSERT INTO customers
SELECT g, initcap(:W) || ' ' || initcap(:W), :W || '.' || :W || g || '@' || :W || '.example',
    '+' || (1000000000 + (random() * 8999999999)::bigint), initcap(w[1 + (300 * random())::int]),
    (ARRAY['US','DE','FR','GB','IT','ES','NL','PL','SE','JP'])[1 + (9 * random()^2)::int],
    timestamptz '2019-01-01' + g * interval '5 min' + random() * interval '5 min',
    round((random() * 10000 - 1000)::numeric, 2), (random() * 4)::int,
    CASE WHEN random() < 0.3 THEN left(:WS || ' ' || :WS || ' ' || :WS, 10 + (random() * 80)::int) END
FROM generate_series(1, :ncust) g,
    LATERAL (SELECT (SELECT array_agg(w::name ORDER BY id) || '{}'::name[] FROM oltp_words) AS w) v;
INSERT INTO orders
SELECT g, 1 + ((:ncust - 1) * random())::bigint,
    (ARRAY['new','paid','shipped','delivered','cancelled','returned'])[1 + (5 * random()^3)::int],
    timestamptz '2021-01-01' + g * interval '20 s' + random() * interval '20 s',
    timestamptz '2021-01-01' + g * interval '20 s' + random() * interval '3 days',
    round((random() * 500)::numeric, 2), (ARRAY['EUR','USD','GBP'])[1 + (2 * random()^2)::int],
    (1 + (random() * 999)::int) || ' ' || initcap(:W) || ' ' || initcap(w[1 + (3 * random())::int + 65000]) || ', '
        || initcap(w[1 + (300 * random())::int]),
    CASE WHEN random() < 0.6 THEN left(:WS || ' ' || :WS || ' ' || :WS, 5 + (random() * 80)::int) END
FROM generate_series(1, :ncust * 6) g,
    LATERAL (SELECT (SELECT array_agg(w::name ORDER BY id) || '{}'::name[] FROM oltp_words) AS w) v;
CREATE INDEX customers_email ON customers (email);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX orders_created ON orders (created_at);
\endif

\if :part2
INSERT INTO order_lines
SELECT o, l, p, 'SKU-' || upper(substr(md5(p::text), 1, 10)), 1 + (random()^3 * 20)::int,
    round((1 + random() * 200)::numeric, 2), (ARRAY[0, 0, 0, 5, 10, 15])[1 + (5 * random())::int],
    left(initcap(:W) || ' ' || :WS || ' ' || :WS || ' ' || :WS || ' ' || :WS || ' ' || :WS || ' ' || :WS,
         30 + (random() * 130)::int)
FROM generate_series(1, :ncust * 6) o, LATERAL generate_series(1, 1 + o % 5) l,
    LATERAL (SELECT 1 + (999999 * random())::int + 0 * l AS p) pp, -- correlated (0 * l): one per row
    LATERAL (SELECT (SELECT array_agg(w::name ORDER BY id) || '{}'::name[] FROM oltp_words) AS w) v;
INSERT INTO events
SELECT g, 1 + ((:ncust - 1) * random())::bigint,
    (ARRAY['login','view','search','add_to_cart','checkout','logout','error'])[1 + (6 * random()^2)::int],
    timestamptz '2022-01-01' + g * interval '8 s' + random() * interval '8 s',
    jsonb_build_object('session', md5(random()::text), 'request_id', md5(random()::text),
        'ip', (random() * 223)::int || '.' || (random() * 255)::int || '.' || (random() * 255)::int || '.' || (random() * 255)::int,
        'ua', (ARRAY['Mozilla/5.0 (X11; Linux x86_64)', 'Mozilla/5.0 (Windows NT 10.0; Win64; x64)',
                     'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1)', 'curl/8.4.0'])[1 + (3 * random())::int],
        'path', '/' || :W || '/' || :W || '/' || (random() * 100000)::int, 'query', :WS || ' ' || :W,
        'referrer', 'https://' || :W || '.example/' || :W || '?q=' || :W, 'amount', round((random() * 300)::numeric, 2),
        'items', (random() * 12)::int, 'device', substr(md5(random()::text), 1, 16), 'ok', random() < 0.97,
        'tags', jsonb_build_array(:W, :W))
FROM generate_series(1, :ncust * 4) g,
    LATERAL (SELECT (SELECT array_agg(w::name ORDER BY id) || '{}'::name[] FROM oltp_words) AS w) v;
CREATE INDEX order_lines_product ON order_lines (product_id);
CREATE INDEX events_customer_time ON events (customer_id, created_at);
\endif

\if :finish
-- New rows of the churn (oltp-churn.sql) take their ids from these.
CREATE SEQUENCE customers_id_seq;
CREATE SEQUENCE orders_id_seq;
CREATE SEQUENCE events_id_seq;
SELECT setval('customers_id_seq', max(id)) FROM customers;
SELECT setval('orders_id_seq', max(id)) FROM orders;
SELECT setval('events_id_seq', max(id)) FROM events;
-- Frozen, hinted and in the visibility map now, so that a later read does not rewrite every page (with data
-- checksums, the first hint-bit change of a page after a checkpoint is WAL-logged as a full page).
VACUUM (FREEZE, ANALYZE);
\endif
