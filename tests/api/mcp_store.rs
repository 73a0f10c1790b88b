//! The store's MCP messages against a real database (SQLite, and PostgreSQL with
//! `TEST_DATABASE_URL`): servers with sealed secrets, tool policies and their versions,
//! tool sessions taken once, `/mcp` approvals used once.

use std::collections::BTreeMap;
use std::sync::Arc;

use lowart::actors::store::{
    CreateToolSession, DeleteMcpServer, ListAudit, ListMcpServers, ListToolSessions,
    PurgeToolSessions, RegisterMcpServer, ResealSecrets, SetToolPolicy, StoreError,
    TakeToolSession, TakenSession, UseApproval, sealed_key_ids,
};
use lowart::crypto::MasterKey;
use lowart::domain::mcp::{
    McpServerSpec, McpTransport, PendingCall, SessionKind, SessionStatus, ToolPolicy, ToolSession,
    call_digest,
};
use lowart::domain::records::Actor;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app};

const NOW: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;

fn admin() -> Actor {
    Actor {
        user_id: "admin".into(),
        key_id: None,
    }
}

fn spec(name: &str) -> McpServerSpec {
    McpServerSpec {
        name: name.into(),
        transport: McpTransport::Stdio {
            command: "mcp-fs".into(),
            args: vec!["--root".into(), "/srv".into()],
        },
        secrets: BTreeMap::from([("FS_TOKEN".into(), "s3cret-token".into())]),
        policies: BTreeMap::from([("delete".into(), ToolPolicy::Confirm)]),
        default_policy: ToolPolicy::Auto,
        policy_version: 0,
        max_concurrency: 4,
        call_timeout_ms: 30_000,
        created_at: 0,
        updated_at: 0,
    }
}

async fn register(app: &TestApp, spec: McpServerSpec) -> Result<McpServerSpec, StoreError> {
    app.store
        .send(RegisterMcpServer {
            spec,
            actor: admin(),
        })
        .await
        .unwrap()
}

fn call(id: &str, path: &str, policy_version: i64) -> PendingCall {
    let arguments = json!({"path": path});
    PendingCall {
        id: id.into(),
        server: "fs".into(),
        tool: "delete".into(),
        name: "fs__delete".into(),
        digest: call_digest("fs__delete", &arguments),
        arguments,
        policy_version,
    }
}

fn session(id: &str, user: &str, kind: SessionKind, pending: Vec<PendingCall>) -> ToolSession {
    ToolSession {
        id: id.into(),
        user_id: user.into(),
        key_id: format!("key_{user}"),
        kind,
        model: "mock".into(),
        status: SessionStatus::Pending,
        stream: false,
        step: 1,
        body: json!({"messages": [{"role": "user", "content": "tidy up"}]}),
        outputs: Vec::new(),
        pending,
        approved: Vec::new(),
        created_at: NOW,
        expires_at: NOW + 10 * MINUTE,
    }
}

async fn create(app: &TestApp, session: ToolSession) {
    app.store
        .send(CreateToolSession(session))
        .await
        .unwrap()
        .unwrap();
}

async fn take(app: &TestApp, id: &str, user: &str, ids: &[&str], now: i64) -> TakenSession {
    app.store
        .send(TakeToolSession {
            id: id.into(),
            user_id: user.into(),
            approved_ids: ids.iter().map(|s| s.to_string()).collect(),
            now,
        })
        .await
        .unwrap()
        .unwrap()
}

async fn use_approval(app: &TestApp, user: &str, digest: &str, version: i64) -> bool {
    app.store
        .send(UseApproval {
            user_id: user.into(),
            digest: digest.into(),
            policy_version: version,
            now: NOW + MINUTE,
        })
        .await
        .unwrap()
        .unwrap()
}

#[actix_web::test]
async fn a_registered_server_lists_with_its_secrets_and_the_audit_keeps_none() {
    let app = spawn_app().await;
    let http = McpServerSpec {
        transport: McpTransport::Http {
            url: "https://tools.example/mcp".into(),
        },
        secrets: BTreeMap::new(),
        ..spec("web")
    };
    let stored = register(&app, spec("fs")).await.unwrap();
    assert!(stored.created_at > 0);
    register(&app, http.clone()).await.unwrap();

    let listed = app.store.send(ListMcpServers).await.unwrap().unwrap();

    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], stored);
    assert_eq!(listed[0].secrets["FS_TOKEN"], "s3cret-token");
    assert_eq!(listed[0].policy("delete"), ToolPolicy::Confirm);
    assert_eq!(listed[0].policy("read"), ToolPolicy::Auto);
    assert_eq!(listed[1].name, "web");
    assert_eq!(listed[1].transport, http.transport);
    assert!(listed[1].secrets.is_empty());
    let audit = app
        .store
        .send(ListAudit { limit: 10 })
        .await
        .unwrap()
        .unwrap();
    let entry = audit
        .iter()
        .find(|e| e.action == "mcp.register" && e.target_id == "fs")
        .expect("an audit row");
    assert_eq!(entry.target_type, "mcp_server");
    assert_eq!(entry.details["secrets"], json!(["FS_TOKEN"]));
    assert!(!entry.details.to_string().contains("s3cret"));
}

#[actix_web::test]
async fn a_taken_name_is_a_conflict_and_a_deleted_one_is_free_again() {
    let app = spawn_app().await;
    register(&app, spec("fs")).await.unwrap();

    let again = register(&app, spec("fs")).await;

    match again {
        Err(StoreError::Conflict(message)) => {
            assert_eq!(message, "MCP server `fs` already exists");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let delete = |name: &str| DeleteMcpServer {
        name: name.into(),
        actor: admin(),
    };
    assert!(app.store.send(delete("fs")).await.unwrap().unwrap());
    assert!(!app.store.send(delete("fs")).await.unwrap().unwrap());
    register(&app, spec("fs")).await.unwrap();
}

#[actix_web::test]
async fn setting_a_policy_bumps_the_version() {
    let app = spawn_app().await;
    register(&app, spec("fs")).await.unwrap();
    let set = |server: &str, policy| SetToolPolicy {
        server: server.into(),
        tool: "read".into(),
        policy,
        actor: admin(),
    };

    let first = app.store.send(set("fs", ToolPolicy::Block)).await.unwrap();
    let second = app
        .store
        .send(set("fs", ToolPolicy::Confirm))
        .await
        .unwrap();

    assert_eq!(first.unwrap().unwrap().policy_version, 1);
    let second = second.unwrap().unwrap();
    assert_eq!(second.policy_version, 2);
    assert_eq!(second.policy("read"), ToolPolicy::Confirm);
    assert_eq!(second.secrets["FS_TOKEN"], "s3cret-token");
    let listed = app.store.send(ListMcpServers).await.unwrap().unwrap();
    assert_eq!(listed[0], second);
    let absent = app.store.send(set("nope", ToolPolicy::Auto)).await.unwrap();
    assert!(absent.unwrap().is_none());
}

#[actix_web::test]
async fn a_session_is_taken_once_by_its_own_user_before_it_expires() {
    let app = spawn_app().await;
    create(
        &app,
        session(
            "s1",
            "alice",
            SessionKind::OpenaiChat,
            vec![call("c1", "/a", 0)],
        ),
    )
    .await;
    create(
        &app,
        session(
            "s2",
            "alice",
            SessionKind::OpenaiChat,
            vec![call("c2", "/b", 0)],
        ),
    )
    .await;
    let listed = app
        .store
        .send(ListToolSessions {
            user_id: "alice".into(),
            now: NOW,
            limit: 10,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listed.len(), 2);

    let by_bob = take(&app, "s1", "bob", &["c1"], NOW).await;
    let first = take(&app, "s1", "alice", &["c1"], NOW).await;
    let second = take(&app, "s1", "alice", &["c1"], NOW).await;
    let late = take(&app, "s2", "alice", &["c2"], NOW + 11 * MINUTE).await;

    assert!(matches!(by_bob, TakenSession::NotFound), "{by_bob:?}");
    let TakenSession::Taken(taken) = first else {
        panic!("expected the session, got {first:?}");
    };
    assert_eq!(taken.status, SessionStatus::Approved);
    assert_eq!(taken.approved, vec!["c1".to_string()]);
    assert_eq!(taken.pending, vec![call("c1", "/a", 0)]);
    assert_eq!(taken.body["messages"][0]["content"], "tidy up");
    assert!(
        matches!(second, TakenSession::AlreadyConfirmed),
        "{second:?}"
    );
    assert!(matches!(late, TakenSession::Expired), "{late:?}");
    assert!(matches!(
        take(&app, "nope", "alice", &[], NOW).await,
        TakenSession::NotFound
    ));
    let purged = app
        .store
        .send(PurgeToolSessions {
            before: NOW + 11 * MINUTE,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(purged, 2);
}

#[actix_web::test]
async fn an_approval_is_used_once_for_its_digest_and_policy_version() {
    let app = spawn_app().await;
    let delete_a = call("c1", "/a", 3);
    let delete_b = call("c2", "/b", 3);
    create(
        &app,
        session(
            "m1",
            "alice",
            SessionKind::Mcp,
            vec![delete_a.clone(), delete_b.clone()],
        ),
    )
    .await;
    // Not approved yet: nothing to use.
    assert!(!use_approval(&app, "alice", &delete_a.digest, 3).await);
    assert!(matches!(
        take(&app, "m1", "alice", &["c1", "c2"], NOW).await,
        TakenSession::Taken(_)
    ));

    let other_args = call("c9", "/c", 3).digest;
    assert!(!use_approval(&app, "alice", &other_args, 3).await);
    assert!(!use_approval(&app, "alice", &delete_a.digest, 4).await);
    assert!(!use_approval(&app, "bob", &delete_a.digest, 3).await);
    assert!(use_approval(&app, "alice", &delete_a.digest, 3).await);
    assert!(!use_approval(&app, "alice", &delete_a.digest, 3).await);
    assert!(use_approval(&app, "alice", &delete_b.digest, 3).await);
    assert!(!use_approval(&app, "alice", &delete_b.digest, 3).await);
}

#[actix_web::test]
async fn rotating_the_master_key_reseals_mcp_secrets() {
    let app = spawn_app().await;
    register(&app, spec("fs")).await.unwrap();
    let db = sea_orm::Database::connect(app.db_url.as_str())
        .await
        .unwrap();
    let before = sealed_key_ids(&db).await.unwrap();
    let new_key = Arc::new(MasterKey::from_hex(&MasterKey::generate_hex().unwrap()).unwrap());

    let resealed = app
        .store
        .send(ResealSecrets {
            new_key: new_key.clone(),
        })
        .await
        .unwrap()
        .unwrap();

    assert_eq!(resealed, 1);
    assert_eq!(before.len(), 1);
    assert_ne!(before[0], new_key.id());
    assert_eq!(
        sealed_key_ids(&db).await.unwrap(),
        vec![new_key.id().to_string()]
    );
    let _ = db.close().await;
}
