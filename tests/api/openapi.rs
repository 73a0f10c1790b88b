//! `/openapi.json`: a public OpenAPI 3 document that lists exactly what the server routes
//! (each documented operation answers; each documented path's routed methods, as its 405
//! `Allow` header names them, are the documented ones) and whose schemas describe what the
//! server really answers.

use std::collections::{BTreeSet, HashSet};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, user_message};

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

async fn document(app: &TestApp) -> Value {
    let res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    res.json().await.unwrap()
}

/// Every `(path, method, operation)` of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(*method) {
                out.push((path.clone(), (*method).to_string(), op.clone()));
            }
        }
    }
    out
}

/// The value a `#/...` reference points at.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// A path with its parameters filled in.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed parameter") + start;
        out.push_str("probe");
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn is_public(op: &Value) -> bool {
    op["security"].as_array().is_some_and(|s| {
        s.iter()
            .any(|r| r.as_object().is_some_and(|r| r.is_empty()))
    })
}

#[actix_web::test]
async fn the_document_is_public_openapi_3_with_resolvable_references() {
    let app = spawn_app().await;
    let doc = document(&app).await;

    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Lowart");
    assert!(doc["info"]["version"].is_string());

    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(
        refs.len() > 20,
        "the document uses references: {}",
        refs.len()
    );
    for r in &refs {
        assert!(resolve(&doc, r).is_some(), "unresolved reference {r}");
    }

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "x-api-key");
    let global: Vec<&str> = doc["security"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_object()?.keys().next().map(String::as_str))
        .collect();
    assert_eq!(global, ["bearer", "api_key"]);

    let ops = operations(&doc);
    let documented: HashSet<(&str, &str)> = ops
        .iter()
        .map(|(p, m, _)| (p.as_str(), m.as_str()))
        .collect();
    for known in [
        ("/v1/chat/completions", "post"),
        ("/v1/messages", "post"),
        ("/v1/embeddings", "post"),
        ("/v1/models", "get"),
        ("/admin/users", "post"),
        ("/admin/users/{user_id}", "patch"),
        ("/admin/keys", "post"),
        ("/admin/keys/{id}", "delete"),
        ("/admin/models", "post"),
        ("/admin/models/{id}", "patch"),
        ("/admin/models/{id}", "delete"),
        ("/admin/models/{model_id}/fallbacks", "put"),
        ("/admin/breakers", "get"),
        ("/admin/audit", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(documented.contains(&known), "{known:?} is not documented");
    }

    let mut ids = HashSet::new();
    for (path, method, op) in &ops {
        let id = op["operationId"].as_str().unwrap();
        assert!(ids.insert(id.to_string()), "operationId {id} is not unique");
        let statuses: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        // A WebSocket's success is its upgrade, 101.
        assert!(
            statuses.iter().any(|s| s.starts_with('2') || *s == "101"),
            "{method} {path} documents no success"
        );
        if !is_public(op) {
            assert!(
                statuses.iter().any(|s| *s == "401"),
                "{method} {path} needs a key but documents no 401"
            );
        }
        if path.starts_with("/admin/") {
            let description = op["description"].as_str().unwrap_or_default();
            assert!(
                description.contains("Role:") && statuses.iter().any(|s| *s == "403"),
                "{method} {path} does not say which role it needs: {description}"
            );
        }
        if matches!(method.as_str(), "post" | "put" | "patch") {
            assert!(
                op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                "{method} {path} documents no JSON body"
            );
        }
    }
}

/// Whether an answer is the gateway's "no such route" or "no such method".
async fn unrouted(res: reqwest::Response) -> Option<String> {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or_default();
    (status == 405 || code == "route_not_found").then(|| format!("{status} {body}"))
}

#[actix_web::test]
async fn every_documented_operation_is_routed_and_every_routed_method_is_documented() {
    let app = spawn_app().await;
    let doc = document(&app).await;

    // The probe can fail: an unknown path is a `route_not_found`.
    let res = app
        .client
        .get(app.url("/v1/undocumented"))
        .send()
        .await
        .unwrap();
    assert!(unrouted(res).await.is_some());

    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = app.url(&concrete(path));
        let documented: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_uppercase())
            .collect();
        // Without a key: every operation answers (401 when it needs one), and only with a
        // status it documents.
        for method in &documented {
            let op = &item[method.to_lowercase()];
            let res = app
                .client
                .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16().to_string();
            assert!(
                op["responses"].get(&status).is_some(),
                "{method} {path} answered an undocumented {status}"
            );
            if let Some(answer) = unrouted(res).await {
                panic!("{method} {path} is documented but not routed: {answer}");
            }
        }
        // The resource names the methods it routes in the 405 `Allow` of any other one.
        let res = app
            .client
            .request(Method::OPTIONS, &url)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "OPTIONS {path}");
        let allowed: BTreeSet<String> = res.headers()["allow"]
            .to_str()
            .unwrap()
            .split(',')
            .map(|m| m.trim().to_string())
            .collect();
        assert_eq!(allowed, documented, "{path}: routed vs documented methods");
    }
}

/// Checks `value` against a JSON Schema of the document (the keywords utoipa writes:
/// `$ref`, `allOf`, `oneOf`, `anyOf`, `type`, `enum`, `properties`, `required`,
/// `additionalProperties: false`, `items`, `minimum`); answers where it does not fit.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let target = resolve(doc, r).ok_or_else(|| format!("{at}: unresolved {r}"))?;
        return check(doc, target, value, at);
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(doc, s, value, at)?;
        }
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let fits = one
            .iter()
            .filter(|s| check(doc, s, value, at).is_ok())
            .count();
        if fits != 1 {
            return Err(format!("{at}: {value} fits {fits} of oneOf {schema}"));
        }
    }
    if let Some(any) = schema["anyOf"].as_array()
        && !any.iter().any(|s| check(doc, s, value, at).is_ok())
    {
        return Err(format!("{at}: {value} fits none of anyOf {schema}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let type_fits = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| type_fits(t)) {
        return Err(format!("{at}: {value} is not of type {types:?}"));
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {options:?}"));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < min
    {
        return Err(format!("{at}: {n} is below {min}"));
    }
    if let Value::Object(object) = value {
        let properties = schema["properties"].as_object();
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap_or_default();
            if !object.contains_key(field) {
                return Err(format!("{at}: required `{field}` missing from {value}"));
            }
        }
        for (key, v) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(s) => check(doc, s, v, &format!("{at}.{key}"))?,
                None if schema["additionalProperties"] == json!(false) => {
                    return Err(format!("{at}: `{key}` is not a documented property"));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(doc, item_schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Asserts that `res` has `status`, that `status` is documented for `method path` and
/// that the JSON body fits the documented schema; answers the body.
async fn documented(
    doc: &Value,
    method: &str,
    path: &str,
    status: u16,
    res: reqwest::Response,
) -> Value {
    assert_eq!(res.status(), status, "{method} {path}");
    let body: Value = res.json().await.unwrap();
    let mut response = &doc["paths"][path][method]["responses"][status.to_string()];
    if let Some(r) = response["$ref"].as_str() {
        response = resolve(doc, r).unwrap();
    }
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no JSON schema"
    );
    if let Err(e) = check(doc, schema, &body, "body") {
        panic!("{method} {path} {status}: {e}");
    }
    body
}

#[actix_web::test]
async fn answers_fit_their_documented_schemas() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let admin = app.admin_key.clone();
    let d = |method, path, status, res| documented(&doc, method, path, status, res);

    d(
        "get",
        "/healthz",
        200,
        app.client.get(app.url("/healthz")).send().await.unwrap(),
    )
    .await;
    d(
        "get",
        "/readyz",
        200,
        app.client.get(app.url("/readyz")).send().await.unwrap(),
    )
    .await;

    // Users.
    let user = json!({"user_id": "ada", "role": "user", "rpm_limit": 10});
    d(
        "post",
        "/admin/users",
        201,
        app.post_json("/admin/users", &admin, &user).await,
    )
    .await;
    d(
        "get",
        "/admin/users",
        200,
        app.get("/admin/users", &admin).await,
    )
    .await;
    let res = app.get("/admin/users/ada", &admin).await;
    d("get", "/admin/users/{user_id}", 200, res).await;
    let res = app
        .patch_json(
            "/admin/users/ada",
            &admin,
            &json!({"name": "Ada", "tpm_limit": null}),
        )
        .await;
    d("patch", "/admin/users/{user_id}", 200, res).await;
    let quota = json!({"user_id": "bob", "rpm_limit": 5, "token_quota": 1000});
    let res = app.post_json("/admin/users/quota", &admin, &quota).await;
    d("post", "/admin/users/quota", 200, res).await;
    let res = app.delete("/admin/users/bob", &admin).await;
    d("delete", "/admin/users/{user_id}", 200, res).await;
    let res = app.post_json("/admin/users", &admin, &user).await;
    d("post", "/admin/users", 409, res).await;
    let res = app.get("/admin/users/nobody", &admin).await;
    d("get", "/admin/users/{user_id}", 404, res).await;

    // Keys.
    let body = json!({"user_id": "ada", "name": "laptop", "models": ["mock"],
        "expires_at": "2999-01-01T00:00:00Z"});
    let key = d(
        "post",
        "/admin/keys",
        201,
        app.post_json("/admin/keys", &admin, &body).await,
    )
    .await;
    let secret = key["key"].as_str().unwrap().to_string();
    let res = app.get("/admin/keys?user_id=ada", &admin).await;
    d("get", "/admin/keys", 200, res).await;
    let res = app
        .post_json("/admin/keys", &admin, &json!({"user_id": "ada", "nope": 1}))
        .await;
    d("post", "/admin/keys", 400, res).await;
    let res = app.get("/admin/users", &secret).await;
    d("get", "/admin/users", 403, res).await;

    // The client API with that key.
    let chat = json!({"model": "mock", "messages": user_message("hello")});
    let res = app.chat(&secret, &chat).await;
    d("post", "/v1/chat/completions", 200, res).await;
    let res = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &secret)
        .json(&json!({"model": "mock", "max_tokens": 64, "messages": user_message("hello")}))
        .send()
        .await
        .unwrap();
    d("post", "/v1/messages", 200, res).await;
    let res = app
        .post_json(
            "/v1/embeddings",
            &secret,
            &json!({"model": "mock", "input": ["a", "b"]}),
        )
        .await;
    d("post", "/v1/embeddings", 200, res).await;
    d(
        "get",
        "/v1/models",
        200,
        app.get("/v1/models", &secret).await,
    )
    .await;
    let res = app.chat(&secret, &json!({"model": "mock"})).await;
    d("post", "/v1/chat/completions", 400, res).await;
    let res = app.chat("lw-not-a-key", &chat).await;
    d("post", "/v1/chat/completions", 401, res).await;
    let res = app
        .client
        .post(app.url("/v1/messages"))
        .json(&json!({"model": "mock", "max_tokens": 64, "messages": user_message("hi")}))
        .send()
        .await
        .unwrap();
    d("post", "/v1/messages", 401, res).await;

    // Models, fallbacks, breakers.
    let body = json!({"model_id": "spare", "vendor_type": "mock", "api_key": "sk-0123456789",
        "price_input_per_mtok": 1.5});
    let created = d(
        "post",
        "/admin/models",
        201,
        app.post_json("/admin/models", &admin, &body).await,
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    d(
        "get",
        "/admin/models",
        200,
        app.get("/admin/models", &admin).await,
    )
    .await;
    let res = app
        .patch_json(
            &format!("/admin/models/{id}"),
            &admin,
            &json!({"weight": 3, "upstream_model": null}),
        )
        .await;
    d("patch", "/admin/models/{id}", 200, res).await;
    let res = app.set_fallbacks("mock", &["spare"]).await;
    d("put", "/admin/models/{model_id}/fallbacks", 200, res).await;
    let breakers = d(
        "get",
        "/admin/breakers",
        200,
        app.get("/admin/breakers", &admin).await,
    )
    .await;
    assert!(!breakers["data"].as_array().unwrap().is_empty());
    let res = app
        .client
        .put(app.url(&format!("/admin/breakers/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"state": "open"}))
        .send()
        .await
        .unwrap();
    d("put", "/admin/breakers/{deployment_id}", 200, res).await;
    let res = app.delete(&format!("/admin/models/{id}"), &admin).await;
    d("delete", "/admin/models/{id}", 200, res).await;
    let res = app
        .delete(
            &format!("/admin/keys/{}", key["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    d("delete", "/admin/keys/{id}", 200, res).await;
    let audit = d(
        "get",
        "/admin/audit",
        200,
        app.get("/admin/audit?limit=50", &admin).await,
    )
    .await;
    assert!(audit["data"].as_array().unwrap().len() >= 8);
}
