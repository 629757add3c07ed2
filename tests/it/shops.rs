//! The MySQL/MariaDB and PostgreSQL shop drivers against the real servers of this machine, and
//! the presets in `fixtures/shops` against tables made from their shops' own definitions.
//!
//! The servers come from `RECONCILED_TEST_MYSQL_URL` and `RECONCILED_TEST_POSTGRES_URL`
//! (`source scripts/dbs.sh` sets both). Without them a test is skipped, or fails under CI.
//! Each test works in a database (MariaDB) or schema (PostgreSQL) of its own, named after the
//! test and the process, and drops it at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use reconciled::config::Config;
use reconciled::money::{Currency, Money};
use reconciled::shop::{Cell, Lookup, Order, OrderSource, OrderStatus, ShopError};

const MYSQL_VAR: &str = "RECONCILED_TEST_MYSQL_URL";
const POSTGRES_VAR: &str = "RECONCILED_TEST_POSTGRES_URL";
/// The URL the presets carry, replaced by a test database's.
const PRESET_URL: &str = "mysql://USER:PASSWORD@127.0.0.1:3306/DATABASE";

/// A server's URL from the environment; `None` (skip) when unset, except under CI.
pub(crate) fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} is not set, and CI must run the shop-driver tests: source scripts/dbs.sh")
        }
        _ => {
            eprintln!("skipped: {var} is not set (source scripts/dbs.sh to run this test)");
            None
        }
    }
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    format!("{}/{database}{query}", &base[..host_end])
}

/// `url` with `password` set as its password.
fn with_password(url: &str, password: &str) -> String {
    let scheme_end = url.find("://").unwrap() + 3;
    let rest = &url[scheme_end..];
    let (user, host) = match rest.rfind('@') {
        Some(at) => (rest[..at].split(':').next().unwrap(), &rest[at + 1..]),
        None => ("root", rest),
    };
    format!("{}{user}:{password}@{host}", &url[..scheme_end])
}

/// A database, schema or table name unique to this test and process.
fn unique(test: &str) -> String {
    format!("reconciled_t_{test}_{}", std::process::id())
}

/// A configuration with one endpoint and the given `[shop]` fragment.
fn config(shop: &str) -> Config {
    let text = format!(
        "[[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"whsec_x\"]\n\n{shop}"
    );
    Config::from_toml(&text, Path::new("/nonexistent/reconciled-shops-test.toml"))
        .unwrap_or_else(|e| panic!("config: {e}\n{text}"))
}

/// A preset's `[shop]` fragment with the test database's URL in place of its placeholder.
fn preset(name: &str, url: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/shops").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains(PRESET_URL), "{name} carries the placeholder URL");
    text.replace(PRESET_URL, url)
}

fn sql_fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/shops").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A connected order source with its configuration, and lookups on it.
struct Shop {
    source: OrderSource,
    config: Config,
}

impl Shop {
    async fn open(shop: &str) -> Shop {
        let config = config(shop);
        let source = OrderSource::connect(config.shop.as_ref().unwrap())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        Shop { source, config }
    }

    async fn find(&self, reference: Option<&str>, psp_reference: Option<&str>) -> Option<Order> {
        let lookup = Lookup {
            reference: reference.map(str::to_owned),
            psp_reference: psp_reference.map(str::to_owned),
        };
        let status = &self.config.shop.as_ref().unwrap().status;
        self.source
            .find(&lookup, status)
            .await
            .unwrap_or_else(|e| panic!("find {reference:?}/{psp_reference:?}: {e}"))
    }

    async fn by_ref(&self, reference: &str) -> Order {
        self.find(Some(reference), None).await.unwrap_or_else(|| panic!("{reference} not found"))
    }

    async fn fetch_one(&self, reference: &str) -> reconciled::shop::RawOrder {
        let lookup = Lookup { reference: Some(reference.into()), psp_reference: None };
        let mut rows = self.source.fetch(&lookup).await.unwrap_or_else(|e| panic!("fetch: {e}"));
        assert_eq!(rows.len(), 1, "{reference}: {rows:?}");
        rows.remove(0)
    }

    async fn close(self) {
        self.source.close().await;
    }

    /// Batched lookups (MySQL: `UNION ALL` chunks of 32) answer exactly as single ones: each
    /// of `cases`, repeated to span several chunks, in a shuffled order.
    async fn batched_answers_match_single_ones(&self, cases: &[(Option<&str>, Option<&str>)]) {
        let status = &self.config.shop.as_ref().unwrap().status;
        let lookup = |(r, p): &(Option<&str>, Option<&str>)| Lookup {
            reference: r.map(str::to_owned),
            psp_reference: p.map(str::to_owned),
        };
        let mut lookups: Vec<Lookup> = Vec::new();
        for round in 0..(40 / cases.len().max(1) + 1) {
            let mut these: Vec<Lookup> = cases.iter().map(lookup).collect();
            these.rotate_left(round % cases.len().max(1));
            lookups.extend(these);
        }
        assert!(lookups.len() > 32, "spans more than one chunk");
        let batched = self.source.find_many(&lookups, status, 2).await;
        assert_eq!(batched.len(), lookups.len());
        for (l, got) in lookups.iter().zip(batched) {
            let single = self.source.find(l, status).await.unwrap();
            assert_eq!(got.unwrap(), single, "{l:?}");
        }
    }
}

fn money(minor: i64, code: &str) -> Money {
    Money::new(minor, Currency::parse(code).unwrap())
}

/// Drops a test's database or schema when the test fails before it does so itself.
struct Cleanup {
    /// The server's URL, and the statement that drops what the test made.
    url: String,
    statement: String,
    postgres: bool,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (url, statement, postgres) =
            (self.url.clone(), std::mem::take(&mut self.statement), self.postgres);
        // Its own thread and runtime: this may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if postgres {
                    if let Ok((client, conn)) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = client.batch_execute(&statement).await;
                    }
                } else if let Ok(pool) = mysql_async::Pool::from_url(url.as_str()) {
                    if let Ok(mut conn) = pool.get_conn().await {
                        let _ = conn.query_drop(statement).await;
                    }
                    let _ = pool.disconnect().await;
                }
            });
        })
        .join();
    }
}

// --- MariaDB ------------------------------------------------------------------------------

/// A database of its own on the MariaDB server.
struct MysqlDb {
    admin: mysql_async::Pool,
    pool: mysql_async::Pool,
    name: String,
    /// The URL of this database.
    url: String,
    cleanup: Cleanup,
}

impl MysqlDb {
    async fn create(test: &str) -> Option<MysqlDb> {
        let base = server_url(MYSQL_VAR)?;
        let name = unique(test);
        let admin = mysql_async::Pool::from_url(base.as_str()).expect("a mysql:// URL");
        let mut conn = admin.get_conn().await.expect("the MariaDB server is reachable");
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`")).await.unwrap();
        conn.query_drop(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4")).await.unwrap();
        drop(conn);
        let url = with_database(&base, &name);
        let pool = mysql_async::Pool::from_url(url.as_str()).unwrap();
        let cleanup = Cleanup {
            url: base,
            statement: format!("DROP DATABASE IF EXISTS `{name}`"),
            postgres: false,
            armed: true,
        };
        Some(MysqlDb { admin, pool, name, url, cleanup })
    }

    /// Runs statements separated by `;` at line ends (the fixtures' style).
    async fn run(&self, sql: &str) {
        let mut conn = self.pool.get_conn().await.unwrap();
        for statement in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
            let statement = statement.trim_end_matches(';');
            conn.query_drop(statement).await.unwrap_or_else(|e| panic!("{e}\n{statement}"));
        }
    }

    async fn drop(mut self) {
        self.pool.disconnect().await.unwrap();
        let mut conn = self.admin.get_conn().await.unwrap();
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name)).await.unwrap();
        drop(conn);
        self.admin.disconnect().await.unwrap();
        self.cleanup.armed = false;
    }
}

#[tokio::test]
async fn woocommerce_hpos_preset_finds_and_maps_orders() {
    let Some(db) = MysqlDb::create("woo").await else { return };
    db.run(&sql_fixture("woocommerce-hpos.sql")).await;
    db.run(
        "INSERT INTO wp_wc_orders (id, status, currency, type, total_amount, billing_email,
             transaction_id, parent_order_id) VALUES
         (1001, 'wc-pending', 'USD', 'shop_order', 100.10000000, 'ann@example.com', NULL, 0),
         (1002, 'wc-processing', 'EUR', 'shop_order', 19.99500000, 'bo@example.com', 'pi_1002', 0),
         (1003, 'wc-cancelled', 'JPY', 'shop_order', 1500.00000000, NULL, '', 0),
         (1004, 'wc-failed', 'USD', 'shop_order', 5.00000000, 'cy@example.com', NULL, 0),
         (1005, 'wc-on-hold', 'USD', 'shop_order', 12345678901234.12345678, NULL, NULL, 0),
         (1006, 'wc-completed', 'GBP', 'shop_order', 0.01000000, NULL, 'ch_1006', 0),
         (1007, 'wc-refunded', 'USD', 'shop_order', 10.00000000, NULL, NULL, 0),
         (1008, 'wc-completed', 'EUR', 'shop_order_refund', -19.99500000, NULL, 'pi_1002', 1002);",
    )
    .await;
    let shop = Shop::open(&preset("woocommerce-hpos.toml", &db.url)).await;

    let o = shop.by_ref("1001").await;
    assert_eq!(
        (o.order_id.as_str(), o.status, o.raw_status.as_str()),
        ("1001", OrderStatus::AwaitingPayment, "wc-pending")
    );
    assert_eq!(o.amount, money(10010, "USD"), "DECIMAL(26,8) 100.10000000 is exact");
    assert_eq!(o.customer_email.as_deref(), Some("ann@example.com"));
    assert_eq!(o.psp_reference, None, "NULL transaction_id");

    let o = shop.find(None, Some("pi_1002")).await.expect("found by transaction_id");
    assert_eq!((o.order_id.as_str(), o.status), ("1002", OrderStatus::Paid));
    assert_eq!(o.amount, money(2000, "EUR"), "19.995 rounds half up, exactly");
    assert_eq!(o.psp_reference.as_deref(), Some("pi_1002"));

    let o = shop.by_ref("1003").await;
    assert_eq!((o.status, o.amount), (OrderStatus::Cancelled, money(1500, "JPY")));
    assert_eq!(
        (o.customer_email, o.psp_reference),
        (None, None),
        "NULL email, empty transaction_id"
    );

    let o = shop.by_ref("1005").await;
    assert_eq!(
        (o.status, o.amount),
        (OrderStatus::AwaitingPayment, money(1_234_567_890_123_412, "USD"))
    );

    for (id, status) in [
        ("1004", OrderStatus::Cancelled),
        ("1006", OrderStatus::Paid),
        ("1007", OrderStatus::Other),
    ] {
        assert_eq!(shop.by_ref(id).await.status, status, "{id}");
    }
    assert_eq!(shop.by_ref("1006").await.amount, money(1, "GBP"));

    // Both given, pointing at two orders: the one whose id is the reference wins.
    let o = shop.find(Some("1004"), Some("pi_1002")).await.unwrap();
    assert_eq!(o.order_id, "1004");

    for (reference, psp) in [
        (Some("9999"), None),
        (Some("1001abc"), None),
        (Some(" 1001"), None),
        (Some("1008"), None),
        (None, Some("pi_unknown")),
        (None, None),
    ] {
        assert_eq!(shop.find(reference, psp).await, None, "{reference:?}/{psp:?}");
    }
    shop.batched_answers_match_single_ones(&[
        (Some("1001"), None),
        (None, Some("pi_1002")),
        (Some("1003"), None),
        (Some("1004"), Some("pi_1002")),
        (Some("9999"), None),
        (None, None),
        (Some("1008"), None),
        (Some("1006"), None),
    ])
    .await;
    shop.close().await;
    db.drop().await;
}

#[tokio::test]
async fn magento2_preset_finds_and_maps_orders() {
    let Some(db) = MysqlDb::create("magento").await else { return };
    db.run(&sql_fixture("magento2.sql")).await;
    db.run(
        "INSERT INTO sales_order (entity_id, state, status, store_id, grand_total,
             increment_id, customer_email, order_currency_code) VALUES
         (1, 'new', 'pending', 1, 49.9900, '000000123', 'ann@example.com', 'USD'),
         (2, 'processing', 'processing', 1, 1234.5000, '000000124', 'bo@example.com', 'EUR'),
         (3, 'canceled', 'canceled', 1, 10.0000, '000000125', NULL, 'USD'),
         (4, 'complete', 'complete', 1, 0.0100, '000000126', NULL, 'GBP'),
         (5, 'pending_payment', 'pending_payment', 1, 19.9950, '000000127', NULL, 'USD'),
         (6, 'holded', 'holded', 1, 5.0000, '000000128', NULL, 'USD'),
         (7, 'processing', 'my_custom_status', 1, 7.0000, '000000129', NULL, 'USD');
         INSERT INTO sales_order_payment (parent_id, amount_ordered, method, last_trans_id) VALUES
         (1, 49.9900, 'stripe_payments', NULL),
         (2, 1234.5000, 'stripe_payments', 'pi_124'),
         (3, 10.0000, 'checkmo', ''),
         (4, 0.0100, 'stripe_payments', 'pi_126');",
    )
    .await;
    let shop = Shop::open(&preset("magento2.toml", &db.url)).await;

    let o = shop.by_ref("000000123").await;
    assert_eq!(
        (o.order_id.as_str(), o.status, o.raw_status.as_str()),
        ("000000123", OrderStatus::AwaitingPayment, "new")
    );
    assert_eq!(o.amount, money(4999, "USD"), "DECIMAL(20,4) 49.9900 is exact");
    assert_eq!((o.customer_email.as_deref(), o.psp_reference), (Some("ann@example.com"), None));

    let o = shop.find(None, Some("pi_124")).await.expect("found by last_trans_id");
    assert_eq!((o.order_id.as_str(), o.status), ("000000124", OrderStatus::Paid));
    assert_eq!(o.amount, money(123_450, "EUR"));
    assert_eq!(o.psp_reference.as_deref(), Some("pi_124"));

    let o = shop.by_ref("000000125").await;
    assert_eq!((o.status, o.customer_email, o.psp_reference), (OrderStatus::Cancelled, None, None));
    assert_eq!(shop.by_ref("000000126").await.status, OrderStatus::Paid);
    let o = shop.by_ref("000000127").await;
    assert_eq!(
        (o.status, o.amount, o.psp_reference),
        (OrderStatus::AwaitingPayment, money(2000, "USD"), None),
        "no payment row"
    );
    assert_eq!(shop.by_ref("000000128").await.status, OrderStatus::Other);
    assert_eq!(
        shop.by_ref("000000129").await.status,
        OrderStatus::Paid,
        "a custom status of a paid state"
    );

    let o = shop.find(Some("000000126"), Some("pi_124")).await.unwrap();
    assert_eq!(o.order_id, "000000126", "the reference's own order wins");
    let o = shop.find(Some("000000124"), Some("pi_124")).await.unwrap();
    assert_eq!(o.order_id, "000000124", "one order found both ways");

    for (reference, psp) in
        [(Some("123"), None), (Some("000000999"), None), (None, Some("pi_999")), (None, None)]
    {
        assert_eq!(shop.find(reference, psp).await, None, "{reference:?}/{psp:?}");
    }
    shop.batched_answers_match_single_ones(&[
        (Some("000000123"), None),
        (None, Some("pi_124")),
        (Some("000000125"), None),
        (Some("000000126"), Some("pi_124")),
        (Some("000000124"), Some("pi_124")),
        (Some("000000129"), None),
        (Some("nope"), None),
    ])
    .await;
    shop.close().await;
    db.drop().await;
}

#[tokio::test]
async fn prestashop_preset_finds_and_maps_orders() {
    let Some(db) = MysqlDb::create("presta").await else { return };
    db.run(&sql_fixture("prestashop.sql")).await;
    db.run(
        "INSERT INTO ps_currency (id_currency, name, iso_code, conversion_rate) VALUES
         (1, 'Euro', 'EUR', 1), (2, 'US Dollar', 'USD', 1.08), (3, 'Yen', 'JPY', 160);
         INSERT INTO ps_customer (id_customer, firstname, lastname, email, date_add) VALUES
         (1, 'Ann', 'A', 'ann@example.com', NOW()), (2, 'Bo', 'B', 'bo@example.com', NOW());
         INSERT INTO ps_orders (id_order, reference, id_carrier, id_lang, id_customer, id_cart,
             id_currency, id_address_delivery, id_address_invoice, current_state, payment,
             total_paid, total_paid_tax_incl, date_add, date_upd) VALUES
         (1, 'XKBKNABJK', 1, 1, 1, 11, 1, 1, 1, 10, 'Bank wire', 25.500000, 25.500000, NOW(), NOW()),
         (2, 'OHSATSERP', 1, 1, 2, 12, 2, 1, 1, 2, 'Stripe', 10.000000, 10.000000, NOW(), NOW()),
         (3, 'OHSATSERP', 2, 1, 2, 12, 2, 1, 1, 2, 'Stripe', 5.995000, 5.995000, NOW(), NOW()),
         (4, 'QWERTYUIO', 1, 1, 1, 14, 3, 1, 1, 6, 'Stripe', 1500.000000, 1500.000000, NOW(), NOW()),
         (5, 'ASDFGHJKL', 1, 1, 9, 15, 1, 1, 1, 8, 'Stripe', 1.000000, 1.000000, NOW(), NOW()),
         (6, 'ZXCVBNMLK', 1, 1, 1, 16, 1, 1, 1, 7, 'Stripe', 2.000000, 2.000000, NOW(), NOW()),
         (7, 'MIXEDSTAT', 1, 1, 1, 17, 1, 1, 1, 6, 'Stripe', 3.000000, 3.000000, NOW(), NOW()),
         (8, 'MIXEDSTAT', 2, 1, 1, 17, 1, 1, 1, 2, 'Stripe', 4.000000, 4.000000, NOW(), NOW()),
         (9, 'DELIVERED', 1, 1, 1, 18, 1, 1, 1, 5, 'Stripe', 4.000000, 4.000000, NOW(), NOW());
         INSERT INTO ps_order_payment (order_reference, id_currency, amount, payment_method,
             transaction_id, date_add) VALUES
         ('OHSATSERP', 2, 15.995000, 'Stripe', 'pi_ps_2', NOW()),
         ('QWERTYUIO', 3, 1500.000000, 'Stripe', 'pi_ps_4', NOW());",
    )
    .await;
    let shop = Shop::open(&preset("prestashop.toml", &db.url)).await;

    let o = shop.by_ref("XKBKNABJK").await;
    assert_eq!(
        (o.order_id.as_str(), o.status, o.raw_status.as_str()),
        ("XKBKNABJK", OrderStatus::AwaitingPayment, "10")
    );
    assert_eq!(o.amount, money(2550, "EUR"), "DECIMAL(20,6) 25.500000 is exact");
    assert_eq!((o.customer_email.as_deref(), o.psp_reference), (Some("ann@example.com"), None));

    let o = shop.find(None, Some("pi_ps_2")).await.expect("found by transaction_id");
    assert_eq!((o.order_id.as_str(), o.status), ("OHSATSERP", OrderStatus::Paid));
    assert_eq!(o.amount, money(1600, "USD"), "a split order's parts add up: 10 + 5.995");
    assert_eq!(
        (o.customer_email.as_deref(), o.psp_reference.as_deref()),
        (Some("bo@example.com"), Some("pi_ps_2"))
    );

    let o = shop.by_ref("QWERTYUIO").await;
    assert_eq!((o.status, o.amount), (OrderStatus::Cancelled, money(1500, "JPY")));
    let o = shop.by_ref("ASDFGHJKL").await;
    assert_eq!(
        (o.status, o.customer_email),
        (OrderStatus::Cancelled, None),
        "payment error; no customer row"
    );
    assert_eq!(shop.by_ref("ZXCVBNMLK").await.status, OrderStatus::Other, "refunded");
    assert_eq!(shop.by_ref("DELIVERED").await.status, OrderStatus::Paid);
    let o = shop.by_ref("MIXEDSTAT").await;
    assert_eq!(
        (o.status, o.raw_status.as_str(), o.amount),
        (OrderStatus::Other, "mixed", money(700, "EUR"))
    );

    for (reference, psp) in
        [(Some("NOTANORDR"), None), (Some("1"), None), (None, Some("pi_unknown")), (None, None)]
    {
        assert_eq!(shop.find(reference, psp).await, None, "{reference:?}/{psp:?}");
    }
    shop.batched_answers_match_single_ones(&[
        (Some("XKBKNABJK"), None),
        (None, Some("pi_ps_2")),
        (Some("QWERTYUIO"), None),
        (Some("MIXEDSTAT"), None),
        (Some("DELIVERED"), None),
        (Some("NOPE"), None),
    ])
    .await;
    shop.close().await;
    db.drop().await;
}

#[tokio::test]
async fn mysql_reads_every_amount_column_type() {
    let Some(db) = MysqlDb::create("mytypes").await else { return };
    db.run(
        "CREATE TABLE orders (
           id BIGINT UNSIGNED PRIMARY KEY,
           ref VARCHAR(20) NOT NULL,
           status ENUM('pending', 'paid', 'cancelled') NOT NULL,
           amount_dec DECIMAL(12,3),
           amount_text TEXT,
           amount_double DOUBLE,
           amount_float FLOAT,
           amount_int INT,
           amount_minor BIGINT,
           currency CHAR(3),
           email VARCHAR(320),
           tx VARCHAR(100)
         );
         INSERT INTO orders VALUES
         (1, 'A-1', 'pending', 100.100, '100.10', 100.1, 19.99, 100, 10010, 'USD', 'a@example.com', 'pi_1'),
         (2, 'A-2', 'paid', 19.995, '19.995', 19.995, 0.1, 7, 1999, 'usd', NULL, NULL),
         (18446744073709551615, 'A-3', 'cancelled', NULL, NULL, NULL, NULL, NULL, NULL, 'EUR', NULL, NULL);",
    )
    .await;
    let status = "[shop.status]\nawaiting_payment = [\"pending\"]\npaid = [\"paid\"]\ncancelled = [\"cancelled\"]\n";
    let shop_with = |amount: &str| {
        format!(
            "[shop]\ndriver = \"mysql\"\nurl = \"{}\"\npool_size = 2\nquery = \"\"\"\n\
             SELECT id AS order_id, status, {amount}, currency, email AS customer_email,\n\
                    tx AS psp_reference\n\
             FROM orders\n\
             WHERE ref = :reference OR CAST(id AS CHAR) = :reference OR tx = :psp_reference\n\
             \"\"\"\n{status}",
            db.url
        )
    };

    // The cells, by column type.
    let shop = Shop::open(&shop_with(
        "amount_dec AS amount, amount_text, amount_double, amount_float, amount_int, amount_minor",
    ))
    .await;
    let row = shop.fetch_one("1").await;
    assert_eq!(row.order_id, Some(Cell::Int(1)));
    assert_eq!(row.status, Some(Cell::Text("pending".into())), "ENUM as text");
    assert_eq!(row.amount, Some(Cell::Text("100.100".into())), "DECIMAL as its exact text");
    assert_eq!(row.amount_minor, Some(Cell::Int(10010)));
    assert_eq!(row.customer_email, Some(Cell::Text("a@example.com".into())));
    let row = shop.fetch_one("A-3").await;
    assert_eq!(row.order_id, Some(Cell::Text("18446744073709551615".into())), "u64 beyond i64");
    assert_eq!((row.amount, row.customer_email), (Some(Cell::Null), Some(Cell::Null)));
    shop.close().await;

    for (amount, id, want) in [
        ("amount_dec AS amount", "1", 10010),
        ("amount_dec AS amount", "2", 2000),
        ("amount_text AS amount", "1", 10010),
        ("amount_text AS amount", "2", 2000),
        ("amount_double AS amount", "1", 10010),
        ("amount_float AS amount", "1", 1999),
        ("amount_float AS amount", "2", 10),
        ("amount_int AS amount", "1", 10000),
        ("amount_minor", "1", 10010),
        ("amount_minor", "2", 1999),
    ] {
        let shop = Shop::open(&shop_with(amount)).await;
        let o = shop.by_ref(id).await;
        assert_eq!(o.amount, money(want, "USD"), "{amount} of order {id}");
        shop.close().await;
    }

    let shop = Shop::open(&shop_with("amount_dec AS amount")).await;
    let o = shop.by_ref("A-1").await;
    assert_eq!(
        (o.order_id.as_str(), o.status, o.psp_reference.as_deref()),
        ("1", OrderStatus::AwaitingPayment, Some("pi_1"))
    );
    let o = shop.find(None, Some("pi_1")).await.unwrap();
    assert_eq!(o.order_id, "1", "looked up by :psp_reference alone, :reference NULL");
    assert_eq!(shop.by_ref("2").await.status, OrderStatus::Paid);
    assert_eq!(shop.find(Some("nope"), Some("nope")).await, None);
    // A NULL amount is a bad row, named by its order id.
    let lookup = Lookup { reference: Some("A-3".into()), psp_reference: None };
    let status_map = &shop.config.shop.as_ref().unwrap().status;
    let err = shop.source.find(&lookup, status_map).await.unwrap_err();
    assert!(
        matches!(&err, ShopError::BadRow { order_id, .. } if order_id == "18446744073709551615"),
        "{err:?}"
    );
    shop.close().await;
    db.drop().await;
}

#[tokio::test]
async fn mysql_connect_failures_are_fast_and_never_show_the_password() {
    let Some(base) = server_url(MYSQL_VAR) else { return };
    let password = "wr0ng-Pa55-s3cret";
    let shop = |url: &str| {
        format!(
            "[shop]\ndriver = \"mysql\"\nurl = \"{url}\"\nquery = \"SELECT 1 FROM dual WHERE 1 = :reference\"\n\
             [shop.status]\nawaiting_payment = [\"a\"]\npaid = [\"p\"]\ncancelled = [\"c\"]\n"
        )
    };
    for url in [
        with_password(&base, password),
        with_password(&base.replace(":3306", ":1"), password),
        with_password(&base, "wr0ng%2DPa55%2Ds3cret"),
    ] {
        let config = config(&shop(&url));
        let started = Instant::now();
        let err = OrderSource::connect(config.shop.as_ref().unwrap()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "failed fast: {:?}",
            started.elapsed()
        );
        let text = format!("{err} {err:?}");
        assert!(matches!(err, ShopError::Connect { .. }), "{text}");
        assert!(!text.contains(password), "{text}");
        assert!(text.contains("<redacted>"), "names the server: {text}");
        eprintln!("as expected: {err}");
    }
}

#[tokio::test]
async fn mysql_query_errors_are_query_errors() {
    let Some(db) = MysqlDb::create("myerr").await else { return };
    db.run("CREATE TABLE orders (id INT PRIMARY KEY);\nINSERT INTO orders VALUES (1);").await;
    let shop = |query: &str| {
        format!(
            "[shop]\ndriver = \"mysql\"\nurl = \"{}\"\nquery = \"{query}\"\n\
             [shop.status]\nawaiting_payment = [\"a\"]\npaid = [\"p\"]\ncancelled = [\"c\"]\n",
            db.url
        )
    };
    for query in [
        "SELECT * FROM no_such_table WHERE id = :reference",
        "SELECT :reference AS order_id FROM dual WHERE 1 = :nonsense",
        "SELEKT :reference",
        // The session is read-only: a query that writes fails.
        "DELETE FROM orders WHERE id = :reference",
    ] {
        let shop = Shop::open(&shop(query)).await;
        let lookup = Lookup { reference: Some("1".into()), psp_reference: None };
        let err = shop.source.fetch(&lookup).await.unwrap_err();
        assert!(matches!(err, ShopError::Query(_)), "{query}: {err:?}");
        eprintln!("as expected: {err}");
        shop.close().await;
    }
    let mut conn = db.pool.get_conn().await.unwrap();
    let left: Option<i64> = conn.query_first("SELECT COUNT(*) FROM orders").await.unwrap();
    assert_eq!(left, Some(1), "nothing was deleted");
    drop(conn);
    db.drop().await;
}

// --- PostgreSQL ---------------------------------------------------------------------------

/// A schema of its own on the PostgreSQL server.
struct PgSchema {
    client: tokio_postgres::Client,
    name: String,
    base: String,
    cleanup: Cleanup,
}

impl PgSchema {
    async fn create(test: &str) -> Option<PgSchema> {
        let base = server_url(POSTGRES_VAR)?;
        let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL is reachable");
        tokio::spawn(connection);
        let name = unique(test);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"))
            .await
            .unwrap();
        let cleanup = Cleanup {
            url: base.clone(),
            statement: format!("DROP SCHEMA IF EXISTS {name} CASCADE"),
            postgres: true,
            armed: true,
        };
        Some(PgSchema { client, name, base, cleanup })
    }

    async fn drop(mut self) {
        self.client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name)).await.unwrap();
        self.cleanup.armed = false;
    }
}

/// `numeric` values whose decoding is checked against PostgreSQL's own text.
const NUMERICS: &str = "(VALUES (0::numeric), (0.00), (100.10), (19.995), (-0.0005), (0.1), (-1),
    (123456789012345678901234567890.123456789), (10000), (1e20), (1e-20), (9999.9999),
    (10000.0001), (-99999999.99990000), (12345.6789), ('NaN'::numeric)) AS t(v)";

const PG_STATUS: &str =
    "[shop.status]\nawaiting_payment = [\"pending\"]\npaid = [\"paid\"]\ncancelled = [\"cancelled\"]\n";

fn pg_shop(url: &str, query: &str) -> String {
    format!(
        "[shop]\ndriver = \"postgres\"\nurl = \"{url}\"\npool_size = 2\nquery = \"\"\"\n{query}\n\"\"\"\n{PG_STATUS}"
    )
}

#[tokio::test]
async fn postgres_reads_every_amount_column_type_exactly() {
    let Some(db) = PgSchema::create("pgtypes").await else { return };
    let s = &db.name;
    db.client
        .batch_execute(&format!(
            "CREATE TYPE {s}.order_status AS ENUM ('pending', 'paid', 'cancelled');
             CREATE DOMAIN {s}.email AS varchar(320);
             CREATE TABLE {s}.orders (
               id integer PRIMARY KEY,
               uid uuid NOT NULL,
               status {s}.order_status NOT NULL,
               amount_num numeric(12,2),
               amount_free numeric,
               amount_text text,
               amount_real real,
               amount_double double precision,
               amount_int integer,
               amount_minor bigint,
               amount_small smallint,
               currency char(3),
               email {s}.email,
               tx text,
               created_at timestamptz NOT NULL DEFAULT now()
             );
             INSERT INTO {s}.orders VALUES
             (1, '6f1c1e8e-4b0a-4c56-9a7e-0d6f2c7b9a10', 'pending', 100.10, 19.995, '100.10',
              19.99, 100.1, 100, 10010, 7, 'USD', 'a@example.com', 'pi_1'),
             (2, '00000000-0000-0000-0000-000000000002', 'paid', 0.01, 123456789012345678901234567890.123456789,
              '19.995', 0.1, 19.995, 7, 1999, -3, 'usd', NULL, NULL),
             (3, '00000000-0000-0000-0000-000000000003', 'cancelled', -12.34, 0.00000012, NULL,
              NULL, NULL, NULL, NULL, NULL, 'JPY', NULL, NULL);"
        ))
        .await
        .unwrap();

    // The cells, by column type; the id is compared as text, as PostgreSQL needs.
    let shop = Shop::open(&pg_shop(
        &db.base,
        &format!(
            "SELECT id AS order_id, status, amount_num AS amount, amount_free, amount_text,
                    amount_real, amount_minor, currency, email AS customer_email,
                    uid::text AS uid_text, uid AS psp_reference, created_at
             FROM {s}.orders
             WHERE id::text = :reference OR tx = :psp_reference OR uid::text = :reference"
        ),
    ))
    .await;
    let row = shop.fetch_one("1").await;
    assert_eq!(row.order_id, Some(Cell::Int(1)));
    assert_eq!(row.status, Some(Cell::Text("pending".into())), "an enum as its label");
    assert_eq!(row.amount, Some(Cell::Text("100.10".into())), "numeric(12,2) keeps its scale");
    assert_eq!(row.amount_minor, Some(Cell::Int(10010)));
    assert_eq!(row.currency, Some(Cell::Text("USD".into())));
    assert_eq!(
        row.customer_email,
        Some(Cell::Text("a@example.com".into())),
        "a domain over varchar"
    );
    assert_eq!(row.psp_reference, Some(Cell::Text("6f1c1e8e-4b0a-4c56-9a7e-0d6f2c7b9a10".into())));
    let row = shop.fetch_one("3").await;
    assert_eq!(row.amount, Some(Cell::Text("-12.34".into())));
    assert_eq!((row.amount_minor, row.customer_email), (Some(Cell::Null), Some(Cell::Null)));
    shop.close().await;

    // numeric text, exact whatever its size, compared against PostgreSQL's own rendering.
    let shop = Shop::open(&pg_shop(
        &db.base,
        &format!("SELECT v AS amount FROM {NUMERICS} WHERE :reference IS NOT NULL"),
    ))
    .await;
    let lookup = Lookup { reference: Some("x".into()), psp_reference: None };
    let cells: Vec<Option<Cell>> =
        shop.source.fetch(&lookup).await.unwrap().into_iter().map(|r| r.amount).collect();
    let rows = db.client.query(&format!("SELECT v::text FROM {NUMERICS}"), &[]).await.unwrap();
    let want: Vec<Option<Cell>> =
        rows.iter().map(|r| Some(Cell::Text(r.get::<_, String>(0)))).collect();
    assert_eq!(cells, want);
    shop.close().await;

    for (amount, id, want, code) in [
        ("amount_num AS amount", "1", 10010, "USD"),
        ("amount_num AS amount", "2", 1, "USD"),
        ("amount_num AS amount", "3", -12, "JPY"),
        ("amount_free AS amount", "1", 2000, "USD"),
        ("amount_text AS amount", "1", 10010, "USD"),
        ("amount_text AS amount", "2", 2000, "USD"),
        ("amount_real AS amount", "1", 1999, "USD"),
        ("amount_real AS amount", "2", 10, "USD"),
        ("amount_double AS amount", "1", 10010, "USD"),
        ("amount_int AS amount", "1", 10000, "USD"),
        ("amount_small AS amount", "2", -300, "USD"),
        ("amount_minor", "1", 10010, "USD"),
    ] {
        let shop = Shop::open(&pg_shop(
            &db.base,
            &format!(
                "SELECT id AS order_id, status, {amount}, currency FROM {s}.orders
                 WHERE id::text = :reference"
            ),
        ))
        .await;
        let o = shop.by_ref(id).await;
        assert_eq!(o.amount, money(want, code), "{amount} of order {id}");
        shop.close().await;
    }

    // Lookups: :reference used twice is one parameter; either may be NULL.
    let shop = Shop::open(&pg_shop(
        &db.base,
        &format!(
            "SELECT id AS order_id, status::text AS status, amount_num AS amount, currency,
                    email AS customer_email, tx AS psp_reference
             FROM {s}.orders
             WHERE id::text = :reference OR tx = :psp_reference OR uid::text = :reference"
        ),
    ))
    .await;
    let o = shop.by_ref("1").await;
    assert_eq!(
        (o.status, o.customer_email.as_deref(), o.psp_reference.as_deref()),
        (OrderStatus::AwaitingPayment, Some("a@example.com"), Some("pi_1"))
    );
    let o = shop.find(None, Some("pi_1")).await.unwrap();
    assert_eq!(o.order_id, "1");
    let o = shop.by_ref("00000000-0000-0000-0000-000000000002").await;
    assert_eq!((o.order_id.as_str(), o.status, o.customer_email), ("2", OrderStatus::Paid, None));
    assert_eq!(shop.by_ref("3").await.status, OrderStatus::Cancelled);
    let o = shop.find(Some("2"), Some("pi_1")).await.unwrap();
    assert_eq!(o.order_id, "2", "the reference's own order wins");
    assert_eq!(shop.find(Some("4"), None).await, None);
    assert_eq!(shop.find(Some("1abc"), None).await, None);
    assert_eq!(shop.find(None, None).await, None);
    shop.close().await;

    // A column the order needs, in a type the driver does not read, is named.
    let shop = Shop::open(&pg_shop(
        &db.base,
        &format!(
            "SELECT id AS order_id, created_at AS amount FROM {s}.orders WHERE id::text = :reference"
        ),
    ))
    .await;
    let lookup = Lookup { reference: Some("1".into()), psp_reference: None };
    let err = shop.source.fetch(&lookup).await.unwrap_err();
    assert!(
        matches!(&err, ShopError::Query(m) if m.contains("amount") && m.contains("timestamptz")),
        "{err:?}"
    );
    shop.close().await;
    db.drop().await;
}

#[tokio::test]
async fn postgres_connect_failures_are_fast_and_never_show_the_password() {
    let Some(base) = server_url(POSTGRES_VAR) else { return };
    let password = "wr0ng-Pa55-s3cret";
    let encoded = "wr0ng%2DPa55%2Ds3cret";
    for url in [
        with_password(&base.replace(":5432", ":1"), password),
        with_password(&with_database(&base, "reconciled_no_such_database"), password),
        with_password(&with_database(&base, "reconciled_no_such_database"), encoded),
    ] {
        let config = config(&pg_shop(&url, "SELECT 1 WHERE :reference IS NULL"));
        let started = Instant::now();
        let err = OrderSource::connect(config.shop.as_ref().unwrap()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "failed fast: {:?}",
            started.elapsed()
        );
        let text = format!("{err} {err:?}");
        assert!(matches!(err, ShopError::Connect { .. }), "{text}");
        assert!(!text.contains(password) && !text.contains(encoded), "{text}");
        assert!(text.contains("<redacted>"), "names the server: {text}");
        eprintln!("as expected: {err}");
    }

    // Trust authentication ignores the password, so this one connects: its Debug hides it too.
    let config =
        config(&pg_shop(&with_password(&base, password), "SELECT 1 WHERE :reference IS NULL"));
    let source = OrderSource::connect(config.shop.as_ref().unwrap()).await.expect("connects");
    let debug = format!("{source:?}");
    assert!(!debug.contains(password) && debug.contains("<redacted>"), "{debug}");
    source.close().await;
}

#[tokio::test]
async fn postgres_query_errors_are_query_errors() {
    let Some(db) = PgSchema::create("pgerr").await else { return };
    let s = &db.name;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE {s}.orders (id integer, status text); INSERT INTO {s}.orders VALUES (1, 'x')"
        ))
        .await
        .unwrap();
    for query in [
        format!("SELECT * FROM {s}.no_such_table WHERE id::text = :reference"),
        // PostgreSQL does not compare integer with text: the query must cast.
        format!("SELECT * FROM {s}.orders WHERE id = :reference"),
        "SELEKT :reference".to_owned(),
        // Every transaction is read-only: a query that writes fails.
        format!("DELETE FROM {s}.orders WHERE id::text = :reference RETURNING id AS order_id"),
    ] {
        let shop = Shop::open(&pg_shop(&db.base, &query)).await;
        let lookup = Lookup { reference: Some("1".into()), psp_reference: None };
        let err = shop.source.fetch(&lookup).await.unwrap_err();
        assert!(matches!(err, ShopError::Query(_)), "{query}: {err:?}");
        eprintln!("as expected: {err}");
        shop.close().await;
    }
    let left: i64 =
        db.client.query_one(&format!("SELECT count(*) FROM {s}.orders"), &[]).await.unwrap().get(0);
    assert_eq!(left, 1, "nothing was deleted");
    // An unknown parameter is refused when connecting.
    let config = config(&pg_shop(&db.base, "SELECT 1 WHERE :reference = :other"));
    let err = OrderSource::connect(config.shop.as_ref().unwrap()).await.unwrap_err();
    assert!(matches!(&err, ShopError::Query(m) if m.contains(":other")), "{err:?}");
    db.drop().await;
}

/// A server that accepts connections and never answers: connecting gives up in seconds.
#[tokio::test]
async fn connecting_to_a_silent_server_gives_up() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let status = "[shop.status]\nawaiting_payment = [\"a\"]\npaid = [\"p\"]\ncancelled = [\"c\"]\n";
    let mysql = config(&format!(
        "[shop]\ndriver = \"mysql\"\nurl = \"mysql://u:s3cret@127.0.0.1:{port}/db\"\n\
         query = \"SELECT 1 FROM dual WHERE 1 = :reference\"\n{status}"
    ));
    let postgres = config(&pg_shop(
        &format!("postgres://u:s3cret@127.0.0.1:{port}/db"),
        "SELECT 1 WHERE :reference IS NULL",
    ));
    let started = Instant::now();
    let (m, p) = tokio::join!(
        OrderSource::connect(mysql.shop.as_ref().unwrap()),
        OrderSource::connect(postgres.shop.as_ref().unwrap()),
    );
    assert!(started.elapsed() < Duration::from_secs(12), "gave up in {:?}", started.elapsed());
    for err in [m.unwrap_err(), p.unwrap_err()] {
        let text = err.to_string();
        assert!(matches!(err, ShopError::Connect { .. }) && !text.contains("s3cret"), "{text}");
        eprintln!("as expected: {text}");
    }
    silent.abort();
}

/// `check-config` reads the columns a query returns from the server itself, with no row in the
/// table: a query missing a required column is caught before the first notification.
#[tokio::test]
async fn the_query_shape_is_checked_on_each_server_without_a_row() {
    use reconciled::shop::check_columns;
    let good = "SELECT id AS order_id, state AS status, total AS amount, code AS currency";
    let cents = "SELECT id AS order_id, state AS status, cents AS amount_minor, code AS currency";
    let no_currency = "SELECT id AS order_id, state AS status, total AS amount";
    let no_amount = "SELECT id AS order_id, state AS status, code AS currency";
    let cases = [
        (good, None),
        (cents, None),
        (no_currency, Some("no currency column")),
        (no_amount, Some("no amount (whole units, e.g. 25.99) or amount_minor")),
    ];
    if let Some(db) = MysqlDb::create("myshape").await {
        db.run("CREATE TABLE orders (id INT PRIMARY KEY, state TEXT, total DECIMAL(10,2), cents INT, code CHAR(3))")
            .await;
        for (select, expected) in cases {
            let query = format!("{select} FROM orders WHERE id = :reference");
            let shop = Shop::open(&format!(
                "[shop]\ndriver = \"mysql\"\nurl = \"{}\"\nquery = \"{query}\"\n\
                 [shop.status]\nawaiting_payment = [\"a\"]\npaid = [\"p\"]\ncancelled = [\"c\"]\n",
                db.url
            ))
            .await;
            let columns = shop.source.columns().await.unwrap();
            match (check_columns(&columns), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(why)) => assert!(e.contains(why), "{query}: {e}"),
                (got, _) => panic!("mysql {query}: {got:?} ({columns:?})"),
            }
            shop.close().await;
        }
        db.drop().await;
    }
    if let Some(db) = PgSchema::create("pgshape").await {
        let s = &db.name;
        db.client
            .batch_execute(&format!(
                "CREATE TABLE {s}.orders (id integer, state text, total numeric(10,2), cents bigint, code char(3))"
            ))
            .await
            .unwrap();
        for (select, expected) in cases {
            let query = format!("{select} FROM {s}.orders WHERE id::text = :reference");
            let shop = Shop::open(&pg_shop(&db.base, &query)).await;
            let columns = shop.source.columns().await.unwrap();
            match (check_columns(&columns), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(why)) => assert!(e.contains(why), "{query}: {e}"),
                (got, _) => panic!("postgres {query}: {got:?} ({columns:?})"),
            }
            shop.close().await;
        }
        db.drop().await;
    }
}
