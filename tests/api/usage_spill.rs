//! Usage rows survive a database that stops taking them: the writer retries for
//! `usage_spill_after_ms`, then appends them to the spill file (also when its bounded queue
//! is full); the file is replayed at the next start or when the database answers again, and
//! rows are counted as dropped only when even the spill file cannot be written.

use std::collections::BTreeSet;
use std::time::Duration;

use lowart::actors::store::{FlushUsage, Ping};
use sea_orm::{ConnectionTrait, EntityTrait};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, metric_sample, serve, spawn_app_with, test_settings, usage_spill_file, user_message,
};

/// How long a flush may take against a dead database with a 300 ms spill bound: generous
/// for a loaded machine, far below "never returns".
const FLUSH_BOUND: Duration = Duration::from_secs(10);

async fn take_usage_table_away(app: &TestApp) {
    app.db()
        .await
        .execute_unprepared(r#"ALTER TABLE "usage" RENAME TO "usage_away""#)
        .await
        .unwrap();
}

async fn bring_usage_table_back(app: &TestApp) {
    app.db()
        .await
        .execute_unprepared(r#"ALTER TABLE "usage_away" RENAME TO "usage""#)
        .await
        .unwrap();
}

/// Sends `count` chat requests to the built-in `mock` model; answers their request ids.
async fn chat_requests(app: &TestApp, count: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..count {
        let res = app
            .chat(
                &app.admin_key,
                &json!({"model": "mock", "messages": user_message(&format!("row {i}"))}),
            )
            .await;
        assert_eq!(res.status(), 200);
        ids.insert(res.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    ids
}

/// A counter's value at `address`.
async fn counter(client: &reqwest::Client, address: &str, name: &str) -> u64 {
    metric_sample(client, address, name).await as u64
}

fn spilled_request_ids(app: &TestApp) -> Vec<String> {
    std::fs::read_to_string(usage_spill_file(&app.dir))
        .unwrap()
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            row["request_id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn assert_no_spill_file(app: &TestApp) {
    let file = usage_spill_file(&app.dir);
    assert!(!file.exists(), "{} is still there", file.display());
    let mut replaying = file.into_os_string();
    replaying.push(".replaying");
    assert!(!std::path::Path::new(&replaying).exists());
}

async fn usage_request_ids(app: &TestApp) -> Vec<String> {
    let mut ids: Vec<String> = lowart::entities::usage::Entity::find()
        .all(&app.db().await)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.request_id)
        .collect();
    ids.sort();
    ids
}

#[actix_web::test]
async fn rows_spill_while_the_database_is_down_and_are_replayed_at_the_next_start() {
    let app = spawn_app_with(|s| s.database.usage_spill_after_ms = 300).await;
    take_usage_table_away(&app).await;

    let ids = chat_requests(&app, 3).await;
    tokio::time::timeout(FLUSH_BOUND, app.store.send(FlushUsage))
        .await
        .expect("a flush against a dead database returns within the spill bound")
        .unwrap();

    let spilled = spilled_request_ids(&app);
    assert_eq!(spilled.len(), 3, "one line per row, no duplicates");
    assert_eq!(spilled.into_iter().collect::<BTreeSet<_>>(), ids);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(usage_spill_file(&app.dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let metric = |name| counter(&app.client, &app.address, name);
    assert_eq!(metric("gateway_usage_rows_spilled_total").await, 3);
    assert_eq!(metric("gateway_usage_rows_dropped_total").await, 0);

    // The next start, on the same database and spill file, moves the rows into `usage`.
    bring_usage_table_back(&app).await;
    assert!(usage_request_ids(&app).await.is_empty());
    let next_address = serve(test_settings(&app.dir, &app.db_url, &app.admin_key)).await;

    assert_eq!(
        usage_request_ids(&app).await,
        ids.into_iter().collect::<Vec<_>>()
    );
    assert_no_spill_file(&app);
    let replayed = counter(
        &app.client,
        &next_address,
        "gateway_usage_rows_replayed_total",
    )
    .await;
    assert_eq!(replayed, 3);
}

#[actix_web::test]
async fn a_full_writer_queue_spills_rows_and_they_are_written_once_the_database_answers() {
    let app = spawn_app_with(|s| {
        s.database.usage_batch_size = 1;
        s.database.usage_queue_batches = 1;
        // Far longer than the test: only the full queue can make rows spill.
        s.database.usage_spill_after_ms = 600_000;
    })
    .await;
    take_usage_table_away(&app).await;

    let ids = chat_requests(&app, 6).await;
    // The store handles messages in order: after this answer it has handled every row.
    app.store.send(Ping).await.unwrap().unwrap();

    // One batch is in the writer's hands and one waits in the queue; the rest spilled.
    let spilled = counter(
        &app.client,
        &app.address,
        "gateway_usage_rows_spilled_total",
    )
    .await;
    assert!(spilled >= 4, "only {spilled} rows spilled");
    assert_eq!(spilled_request_ids(&app).len() as u64, spilled);
    assert_eq!(
        counter(
            &app.client,
            &app.address,
            "gateway_usage_rows_dropped_total"
        )
        .await,
        0
    );

    // When the database answers again, the held batches are written and the spill file is
    // replayed: every row exactly once.
    bring_usage_table_back(&app).await;
    let rows = app.usage_rows().await;
    let mut written: Vec<String> = rows.into_iter().map(|r| r.request_id).collect();
    written.sort();
    assert_eq!(written, ids.into_iter().collect::<Vec<_>>());
    assert_no_spill_file(&app);
    assert_eq!(
        counter(
            &app.client,
            &app.address,
            "gateway_usage_rows_replayed_total"
        )
        .await,
        spilled
    );
}

#[actix_web::test]
async fn rows_are_counted_as_dropped_only_when_the_spill_file_cannot_be_written() {
    let unwritable = std::env::temp_dir()
        .join(format!("lowart-missing-{}", uuid::Uuid::new_v4().simple()))
        .join("spill.jsonl");
    let app = spawn_app_with(|s| {
        s.database.usage_spill_after_ms = 300;
        s.database.usage_spill_file = unwritable.clone();
    })
    .await;
    take_usage_table_away(&app).await;

    chat_requests(&app, 2).await;
    tokio::time::timeout(FLUSH_BOUND, app.store.send(FlushUsage))
        .await
        .expect("a flush returns even when nothing can take the rows")
        .unwrap();

    let metric = |name| counter(&app.client, &app.address, name);
    assert_eq!(metric("gateway_usage_rows_dropped_total").await, 2);
    assert_eq!(metric("gateway_usage_rows_spilled_total").await, 0);
    assert!(!unwritable.exists());
}

#[actix_web::test]
async fn a_replay_cut_short_before_its_commit_is_finished_at_the_next_start() {
    let app = spawn_app_with(|s| s.database.usage_spill_after_ms = 300).await;
    take_usage_table_away(&app).await;

    // Rows spilled, then taken for a replay that never committed (the process died).
    let mut ids = chat_requests(&app, 2).await;
    app.store.send(FlushUsage).await.unwrap();
    let file = usage_spill_file(&app.dir);
    let mut replaying = file.clone().into_os_string();
    replaying.push(".replaying");
    std::fs::rename(&file, &replaying).unwrap();
    // More rows spilled since, and a line that is not a usage row.
    ids.extend(chat_requests(&app, 2).await);
    app.store.send(FlushUsage).await.unwrap();
    let mut spilled = std::fs::read_to_string(&file).unwrap();
    assert_eq!(spilled.lines().count(), 2);
    spilled.push_str("{\"not\": \"a usage row\"}\n");
    std::fs::write(&file, spilled).unwrap();

    bring_usage_table_back(&app).await;
    let next_address = serve(test_settings(&app.dir, &app.db_url, &app.admin_key)).await;

    assert_eq!(
        usage_request_ids(&app).await,
        ids.into_iter().collect::<Vec<_>>()
    );
    assert_no_spill_file(&app);
    let metric = |name| counter(&app.client, &next_address, name);
    assert_eq!(metric("gateway_usage_rows_replayed_total").await, 4);
    assert_eq!(metric("gateway_usage_rows_dropped_total").await, 1);
}
