-- The business database examples/intake-pipeline.toml cross-references: a customers table
-- and a few rows. Make it beside the pipeline (verre opens it read-only):
--
--   python3 -c "import sqlite3; sqlite3.connect('examples/crm.db').executescript(open('examples/crm.sql').read())"
--
-- (or `sqlite3 examples/crm.db < examples/crm.sql`). Point `[crossref] database` at your
-- own CRM for real use: SQLite or PostgreSQL.
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE, tier TEXT NOT NULL);
INSERT OR IGNORE INTO customers (id, name, email, tier) VALUES
    (1, 'Atelier Dubois SARL', 'claire.dubois@atelier-dubois.example', 'gold'),
    (2, 'Weber Logistik', 'j.weber@weber-logistik.example', 'silver'),
    (3, 'Boulangeries Martin SAS', 'contact@boulangeries-martin.example', 'gold'),
    (4, 'Kliniek Noord', 'p.devries@kliniek-noord.example', 'platinum');
