//! The edge's security defects: loose database files, SQLite PRAGMAs on every pooled
//! connection.

use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

use crate::helpers::{is_postgres, spawn_app_with, test_settings};

#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[actix_web::test]
async fn the_sqlite_files_are_private_whether_new_or_existing() {
    use std::os::unix::fs::PermissionsExt;
    if is_postgres() {
        return;
    }
    // A new database: the file, its WAL and shared memory are 0600 whatever the umask.
    let app = spawn_app_with(|_| {}).await;
    app.user_key("someone", "user", None).await;
    let files = app.sqlite_files();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for suffix in ["lowart.db", "lowart.db-wal", "lowart.db-shm"] {
        assert!(names.iter().any(|n| n == suffix), "{suffix} in {names:?}");
    }
    for file in &files {
        assert_eq!(mode_of(file), 0o600, "{}", file.display());
    }

    // An existing database left readable by everyone is tightened at start.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let wal = dir.path().join("old.db-wal");
    for file in [&db, &wal] {
        std::fs::write(file, b"").unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let app = spawn_app_with(move |s| s.database.url = lowart::config::Secret::new(url)).await;
    app.user_key("someone", "user", None).await;
    for file in [&db, &wal, &dir.path().join("old.db-shm")] {
        assert_eq!(mode_of(file), 0o600, "{}", file.display());
    }
}

#[actix_web::test]
async fn sqlite_pragmas_hold_on_every_pooled_connection() {
    if is_postgres() {
        return;
    }
    crate::helpers::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    let mut settings = test_settings(&dir, &url, "unused");
    settings.database.max_connections = 4;
    let db = lowart::startup::connect_and_migrate(&settings)
        .await
        .unwrap();
    // Four transactions at once hold four distinct connections of the pool.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(db.begin().await.unwrap());
    }
    for txn in &held {
        let pragma = |name: &str| {
            Statement::from_string(sea_orm::DatabaseBackend::Sqlite, format!("PRAGMA {name}"))
        };
        let row = txn
            .query_one_raw(pragma("foreign_keys"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get_by_index::<i32>(0).unwrap(), 1, "foreign_keys");
        let row = txn
            .query_one_raw(pragma("synchronous"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.try_get_by_index::<i32>(0).unwrap(),
            1,
            "synchronous=NORMAL"
        );
        let row = txn
            .query_one_raw(pragma("journal_mode"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get_by_index::<String>(0).unwrap(), "wal");
    }
}
