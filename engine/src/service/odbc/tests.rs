//! End-to-end tests against real drivers: SQLite's ODBC driver on a database file in a tempdir
//! (skipped with one printed line when `libsqliteodbc` is not installed, unless
//! `STAGE_REQUIRE_SERVICES=1`, as in CI, makes that a failure), and MariaDB at 127.0.0.1:3306
//! when a server happens to be running (skipped otherwise, never failed for its absence).

use super::result::local_to_epoch;
use super::*;

/// Whether SQLite's ODBC driver is registered with the driver manager (`[SQLite3]` in
/// odbcinst.ini); prints the skip line when it is not, or fails under
/// `STAGE_REQUIRE_SERVICES=1`.
fn sqlite_driver(test: &str) -> bool {
    let dir = std::env::var("ODBCSYSINI").unwrap_or_else(|_| "/etc".into());
    let ini = std::fs::read_to_string(std::path::Path::new(&dir).join("odbcinst.ini"));
    if ini.is_ok_and(|text| text.lines().any(|l| l.trim() == "[SQLite3]")) {
        return true;
    }
    if std::env::var("STAGE_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{test}: SQLite's ODBC driver is not installed (STAGE_REQUIRE_SERVICES=1)");
    }
    println!("skipped {test}: SQLite's ODBC driver is not installed (apt install libsqliteodbc)");
    false
}

/// A SQLite database in a fresh tempdir; the dir lives as long as the returned guard.
fn sqlite() -> (tempfile::TempDir, ConnectionConfig) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let cfg = ConnectionConfig::raw(format!("DRIVER=SQLite3;DATABASE={};", path.display()));
    (dir, cfg)
}

fn exec(a: &mut Adapter, sql: &str, specs: &[&str], params: &[Value]) -> Vec<ResultSet> {
    a.execute(sql, specs, params)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn rows(a: &mut Adapter, sql: &str) -> Vec<Vec<Value>> {
    exec(a, sql, &[], &[]).remove(0).rows
}

#[test]
fn odbc_named_config_connects() {
    if !sqlite_driver("odbc_named_config_connects") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("named.db");
    let text = format!(
        r#"{{"db":{{"DRIVER":"SQLite3","DATABASE":"{}",".executeTimeout":4}}}}"#,
        path.display()
    );
    let mut bytes = text.into_bytes();
    let block = simd_json::to_owned_value(&mut bytes).unwrap();
    let cfg = OdbcConfig::parse(&block).unwrap().resolve("db");
    let mut a = acquire("db", &cfg).unwrap();
    assert_eq!(a.execute_timeout, 4);
    assert_eq!(rows(&mut a, "SELECT 1"), vec![vec![Value::Int(1)]]);
}

#[test]
fn odbc_inferred_params_round_trip() {
    if !sqlite_driver("odbc_inferred_params_round_trip") {
        return;
    }
    let (_dir, cfg) = sqlite();
    let mut a = Adapter::open(&cfg).unwrap();
    exec(
        &mut a,
        "CREATE TABLE t (n INTEGER, s TEXT, e TEXT, b INTEGER, i BIGINT, f DOUBLE, bin BLOB, x LONGVARBINARY, y VARBINARY(10))",
        &[],
        &[],
    );
    let params = [
        Value::Null,
        Value::text("héllo"),
        Value::text(""),
        Value::Bool(true),
        Value::Int(-1 << 40),
        Value::Float(2.5),
        Value::Binary(vec![0, 1, 2, 255]),
    ];
    let sets = exec(
        &mut a,
        "INSERT INTO t VALUES (?,?,?,?,?,?,?,NULL,NULL)",
        &[],
        &params,
    );
    assert_eq!(sets[0].affected, Some(1));
    let set = exec(
        &mut a,
        "SELECT n, s, e, b, i, f, bin, x, y FROM t",
        &[],
        &[],
    )
    .remove(0);
    let labels: Vec<_> = set.columns.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(labels, ["n", "s", "e", "b", "i", "f", "bin", "x", "y"]);
    let expected = vec![
        Value::Null,
        Value::text("héllo"),
        Value::Null, // zero-length reads as nil
        Value::Int(1),
        Value::Int(-1 << 40),
        Value::Float(2.5),
        Value::Binary(vec![0, 1, 2, 255]),
        Value::Null,
        Value::Null,
    ];
    let kinds: Vec<_> = set.columns.iter().map(|c| c.data_type).collect();
    assert!(matches!(kinds[4], odbc_api::DataType::BigInt), "{kinds:?}");
    assert!(
        matches!(kinds[6], odbc_api::DataType::Binary { .. }),
        "{kinds:?}"
    );
    assert_eq!(set.rows, vec![expected]);
}

#[test]
fn odbc_typed_params_and_dates() {
    if !sqlite_driver("odbc_typed_params_and_dates") {
        return;
    }
    let (_dir, cfg) = sqlite();
    let mut a = Adapter::open(&cfg).unwrap();
    exec(
        &mut a,
        "CREATE TABLE t (w VARCHAR(10), i INTEGER, u BIGINT, d DOUBLE, ts TIMESTAMP, b BLOB)",
        &[],
        &[],
    );
    let epoch = local_to_epoch((2024, 2, 3, 4, 5, 6)).unwrap();
    let specs = ["10W", "i", "L", "d", "D", "B"];
    let dates = [
        Value::Int(epoch),
        Value::text("2024-02-03 04:05:06"),
        Value::text("2024-02-03T04:05:06.250Z"),
    ];
    for date in dates {
        let params = [
            Value::text("wide ü"),
            Value::text("42"),
            Value::Bool(true),
            Value::Int(3),
            date,
            Value::text("raw"),
        ];
        exec(
            &mut a,
            "INSERT INTO t VALUES (?,?,?,?,?,?)",
            &specs,
            &params,
        );
    }
    let expected = vec![
        Value::text("wide ü"),
        Value::Int(42),
        Value::Int(1),
        Value::Float(3.0),
        Value::Int(epoch),
        Value::Binary(b"raw".to_vec()),
    ];
    assert_eq!(rows(&mut a, "SELECT * FROM t"), vec![expected; 3]);
    // Typed NULLs bind as NULL; a bad value for a numeric kind is the spec's error.
    exec(
        &mut a,
        "INSERT INTO t (i, ts) VALUES (?,?)",
        &["i", "D"],
        &[],
    );
    let nulls = rows(&mut a, "SELECT i, ts FROM t WHERE w IS NULL");
    assert_eq!(nulls, vec![vec![Value::Null, Value::Null]]);
    let err = a.execute("SELECT ?", &["i"], &[Value::Binary(vec![1])]);
    let err = err.unwrap_err().to_string();
    assert_eq!(err, "There was a problem with the data type conversion.");
}

#[test]
fn odbc_update_count_and_multiple_results() {
    if !sqlite_driver("odbc_update_count_and_multiple_results") {
        return;
    }
    let (_dir, cfg) = sqlite();
    let mut a = Adapter::open(&cfg).unwrap();
    exec(&mut a, "CREATE TABLE t (n INTEGER)", &[], &[]);
    for n in 0..3 {
        exec(&mut a, "INSERT INTO t VALUES (?)", &[], &[Value::Int(n)]);
    }
    let sets = exec(
        &mut a,
        "UPDATE t SET n = n + 10 WHERE n > ?",
        &[],
        &[Value::Int(0)],
    );
    assert_eq!(sets.len(), 1);
    assert!(sets[0].columns.is_empty());
    assert_eq!(sets[0].affected, Some(2));
    // SQLite's ODBC driver refuses batches at SQLPrepare ("only one SQL statement allowed"),
    // so SQLMoreResults cannot be exercised here; the refusal must be a clean error.
    let err = a.execute("SELECT 1; SELECT 2", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("only one SQL statement"), "{err}");
    let sets = exec(&mut a, "SELECT n FROM t ORDER BY n", &[], &[]);
    assert_eq!(sets.len(), 1);
    let ns: Vec<_> = sets[0].rows.iter().map(|r| r[0].clone()).collect();
    assert_eq!(ns, [Value::Int(0), Value::Int(11), Value::Int(12)]);
}

#[test]
fn odbc_transactions_nest() {
    if !sqlite_driver("odbc_transactions_nest") {
        return;
    }
    let (_dir, cfg) = sqlite();
    let mut a = Adapter::open(&cfg).unwrap();
    exec(&mut a, "CREATE TABLE t (n INTEGER)", &[], &[]);
    let count = |a: &mut Adapter| rows(a, "SELECT COUNT(*) FROM t")[0][0].clone();
    a.rollback().unwrap(); // depth 0: a successful no-op
    a.begin().unwrap();
    exec(&mut a, "INSERT INTO t VALUES (1)", &[], &[]);
    a.rollback().unwrap();
    assert_eq!((count(&mut a), a.depth()), (Value::Int(0), 0));
    a.begin().unwrap();
    a.begin().unwrap();
    assert_eq!(a.depth(), 2);
    exec(&mut a, "INSERT INTO t VALUES (2)", &[], &[]);
    a.commit().unwrap(); // a nested commit really commits
    exec(&mut a, "INSERT INTO t VALUES (3)", &[], &[]);
    a.rollback().unwrap();
    assert_eq!((count(&mut a), a.depth()), (Value::Int(1), 0));
    // Closing with an open transaction commits it.
    a.begin().unwrap();
    exec(&mut a, "INSERT INTO t VALUES (4)", &[], &[]);
    a.close().unwrap();
    let mut b = Adapter::open(&cfg).unwrap();
    assert_eq!(count(&mut b), Value::Int(2));
}

#[test]
fn odbc_pool_reuses_connection() {
    if !sqlite_driver("odbc_pool_reuses_connection") {
        return;
    }
    let (_dir, cfg) = sqlite();
    let key = "pool-test";
    let mut a = acquire(key, &cfg).unwrap();
    // A TEMP table exists only on the connection that made it: seeing it again proves reuse.
    exec(&mut a, "CREATE TEMP TABLE mine (n INTEGER)", &[], &[]);
    a.begin().unwrap();
    exec(&mut a, "INSERT INTO mine VALUES (7)", &[], &[]);
    drop(a); // release: commits, then back to the pool
    assert_eq!(pooled_count(key), 1);
    let mut b = acquire(key, &cfg).unwrap();
    assert_eq!(pooled_count(key), 0);
    assert_eq!(b.depth(), 0);
    assert_eq!(
        rows(&mut b, "SELECT n FROM mine"),
        vec![vec![Value::Int(7)]]
    );
    // A second adapter while the first is out gets a different connection.
    let mut c = acquire(key, &cfg).unwrap();
    assert!(c.execute("SELECT n FROM mine", &[], &[]).is_err());
    drop((b, c));
    assert_eq!(pooled_count(key), 2);
    // Unpooled adapters never land in a pool.
    drop(Adapter::open(&cfg).unwrap());
    purge_thread_pool();
    assert_eq!(pooled_count(key), 0);
}

#[test]
fn odbc_bad_connection_is_a_clean_error() {
    let cfg = ConnectionConfig::raw("DRIVER=NoSuchDriver;DATABASE=x;");
    let err = acquire("bad", &cfg).err().expect("must fail");
    assert!(matches!(err, OdbcError::Driver(_)), "{err}");
    assert_eq!(pooled_count("bad"), 0);
    let (_dir, cfg) = sqlite();
    let mut a = Adapter::open(&cfg).unwrap();
    let err = a
        .execute("SELECT * FROM missing_table", &[], &[])
        .unwrap_err();
    assert!(err.to_string().contains("missing_table"), "{err}");
}

/// Runs only when a MariaDB server answers on 127.0.0.1:3306 (root, no password, db `test`).
#[test]
fn odbc_mariadb_when_available() {
    let addr = "127.0.0.1:3306".parse().unwrap();
    let timeout = std::time::Duration::from_millis(300);
    if std::net::TcpStream::connect_timeout(&addr, timeout).is_err() {
        eprintln!("odbc_mariadb_when_available: no server on 127.0.0.1:3306, skipped");
        return;
    }
    let cfg = ConnectionConfig::raw(
        "DRIVER=MariaDB Unicode;SERVER=127.0.0.1;PORT=3306;USER=root;PASSWORD=;DATABASE=test;",
    );
    let mut a = match Adapter::open(&cfg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("odbc_mariadb_when_available: cannot log in ({e}), skipped");
            return;
        }
    };
    exec(&mut a, "DROP TABLE IF EXISTS stage_odbc_t", &[], &[]);
    let create = "CREATE TABLE stage_odbc_t (id INT AUTO_INCREMENT PRIMARY KEY, s VARCHAR(20))";
    exec(&mut a, create, &[], &[]);
    exec(
        &mut a,
        "INSERT INTO stage_odbc_t (s) VALUES (?)",
        &["20W"],
        &[Value::text("x")],
    );
    assert_eq!(a.last_insert_id().unwrap(), Value::Int(1));
    let set = exec(&mut a, "SELECT id, s FROM stage_odbc_t", &[], &[]).remove(0);
    assert!(set.columns[0].autoincrement);
    assert_eq!(set.rows, vec![vec![Value::Int(1), Value::text("x")]]);
    exec(&mut a, "DROP TABLE stage_odbc_t", &[], &[]);
    // Multi-statement batches (CLIENT_MULTI_STATEMENTS) give one ResultSet per statement.
    let multi = ConnectionConfig::raw(format!("{}OPTION=67108864;", cfg.connection_string));
    let mut m = Adapter::open(&multi).unwrap();
    let sets = exec(&mut m, "SELECT 1 AS a; SELECT 'x' AS b, 2 AS c", &[], &[]);
    assert_eq!(sets.len(), 2, "{sets:?}");
    assert_eq!(sets[0].rows, vec![vec![Value::Int(1)]]);
    assert_eq!(sets[1].rows, vec![vec![Value::text("x"), Value::Int(2)]]);
}
