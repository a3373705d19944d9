//! A business database on PostgreSQL is opened read-only: a lookup's SQL cannot write
//! (issue 18). Needs `VERRE_TEST_POSTGRES_URL`; skipped locally without it, required in CI.

#[tokio::test]
async fn a_postgres_business_database_refuses_writes() {
    let Some(url) = verre_store::testing::postgres_url("business_read_only").await else {
        return;
    };
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    let read_only = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&verre_store::read_only_url(&url))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM customers")
        .fetch_one(&read_only)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let e = sqlx::query("INSERT INTO customers (id, name) VALUES (1, 'x')")
        .execute(&read_only)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
}
