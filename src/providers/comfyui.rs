//! ComfyUI: a workflow template filled from an image request, submitted to `POST {base}/prompt`,
//! followed over `/ws` or `/history/{prompt_id}`, its outputs fetched from `/view`. Pure
//! translation, no I/O.
//!
//! Shapes as ComfyUI's `server.py`, `execution.py` and `main.py` produce them. Two facts the
//! caller relies on: every prompt ends on `/ws` with `executing` whose `node` is null (after
//! a success, an error or an interrupt alike), and the history entry is written just before
//! that frame, after `execution_success`; so a caller reads history on `Finished`, not on
//! `Succeeded`.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use super::{FailureClass, UpstreamFailure, UpstreamRequest};

/// The names a workflow template may use as `{{name}}`.
pub const PLACEHOLDERS: [&str; 6] = [
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "seed",
    "steps",
];

/// The longest vendor message kept from a validation error (its node details list every
/// allowed value and can be long).
const MAX_MESSAGE_CHARS: usize = 1000;

/// One file a prompt produced, as ComfyUI lists it in `executed` and in history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    pub filename: String,
    pub subfolder: String,
    /// ComfyUI's `type`: `output` (saved), `temp` (previews), `input`.
    pub kind: String,
}

/// One `/ws` text frame, seen from one prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// Another prompt's event, `status`, `execution_cached`, a node starting, or a type this
    /// adapter does not use.
    Ignored,
    Started,
    Progress {
        value: u64,
        max: u64,
    },
    /// An output node finished with these files.
    Executed(Vec<OutputFile>),
    /// `executing` with a null node: the prompt is over, whatever its outcome, and its
    /// history entry is written.
    Finished,
    Succeeded,
    /// The node that failed and its exception message.
    Failed(String),
    Interrupted,
}

/// What `/history/{prompt_id}` says of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryState {
    /// Queued or running: ComfyUI writes the entry only once the prompt is over.
    Pending,
    Succeeded(Vec<OutputFile>),
    Failed(String),
}

/// A `{{ name }}` in a string: its byte range and its name.
struct Placeholder<'a> {
    start: usize,
    end: usize,
    name: &'a str,
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The placeholders of `text` in order: `{{`, optional whitespace, an identifier, optional
/// whitespace, `}}`. Braces around anything else (`{{ }}`, `{{a b}}`) are literal text.
fn placeholders(text: &str) -> Vec<Placeholder<'_>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find("{{") {
        let start = from + open;
        let Some(close) = text[start + 2..].find("}}") else {
            break;
        };
        let name = text[start + 2..start + 2 + close].trim();
        if is_identifier(name) {
            let end = start + 2 + close + 2;
            found.push(Placeholder { start, end, name });
            from = end;
        } else {
            // `{` is one byte: the next search starts on a character boundary.
            from = start + 1;
        }
    }
    found
}

/// Checks a workflow template: ComfyUI's API format (an object of node id → node with a
/// `class_type` and an `inputs` object), placeholders only from `PLACEHOLDERS` and only in
/// values. The message says what is wrong and where.
pub fn check_workflow(template: &Value) -> Result<(), String> {
    let Value::Object(nodes) = template else {
        return Err(
            "the workflow must be a JSON object of node id → node (ComfyUI's API format)".into(),
        );
    };
    if nodes.contains_key("nodes") && nodes.contains_key("links") {
        return Err(
            "this is a UI-format workflow (it has `nodes` and `links`); export it \
             from ComfyUI in the API format instead"
                .into(),
        );
    }
    if nodes.is_empty() {
        return Err("the workflow has no nodes".into());
    }
    for (id, node) in nodes {
        let at = format!("node `{id}`");
        if !placeholders(id).is_empty() {
            return Err(format!(
                "{at}: placeholders are filled in values only, not in keys"
            ));
        }
        let Value::Object(fields) = node else {
            return Err(format!("{at} is not an object"));
        };
        if non_empty(fields.get("class_type")).is_none() {
            return Err(format!("{at} has no `class_type`"));
        }
        if !fields.get("inputs").is_some_and(Value::is_object) {
            return Err(format!("{at} has no `inputs` object"));
        }
        check_placeholders(node, &at)?;
    }
    Ok(())
}

fn check_placeholders(value: &Value, at: &str) -> Result<(), String> {
    match value {
        Value::String(text) => match placeholders(text)
            .into_iter()
            .find(|p| !PLACEHOLDERS.contains(&p.name))
        {
            Some(p) => Err(format!(
                "{at}: unknown placeholder `{}`; known: {}",
                &text[p.start..p.end],
                PLACEHOLDERS.join(", ")
            )),
            None => Ok(()),
        },
        Value::Array(items) => items.iter().try_for_each(|v| check_placeholders(v, at)),
        Value::Object(map) => map.iter().try_for_each(|(key, v)| {
            if placeholders(key).is_empty() {
                check_placeholders(v, at)
            } else {
                Err(format!(
                    "{at}: placeholders are filled in values only, not in the key `{key}`"
                ))
            }
        }),
        _ => Ok(()),
    }
}

/// The workflow with its placeholders filled from `values`. A string that is exactly one
/// placeholder becomes the value itself, with its JSON type (`"{{seed}}"` → `42`); a
/// placeholder among other text is replaced by the value's text (a string without quotes,
/// a number in decimal, null as nothing). A placeholder without a value stays as written.
/// Keys are never filled.
pub fn fill_workflow(template: &Value, values: &Map<String, Value>) -> Value {
    match template {
        Value::String(text) => fill_string(text, values),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| fill_workflow(v, values)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_workflow(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn fill_string(text: &str, values: &Map<String, Value>) -> Value {
    let found = placeholders(text);
    if let [only] = found.as_slice()
        && only.start == 0
        && only.end == text.len()
    {
        return values
            .get(only.name)
            .cloned()
            .unwrap_or_else(|| Value::String(text.to_string()));
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for p in &found {
        out.push_str(&text[at..p.start]);
        match values.get(p.name) {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) => {}
            Some(other) => out.push_str(&other.to_string()),
            None => out.push_str(&text[p.start..p.end]),
        }
        at = p.end;
    }
    out.push_str(&text[at..]);
    Value::String(out)
}

/// `{base_url}{path}` as a URL; a base that is not an http(s) URL is a `Connect` failure.
fn endpoint(base_url: &str, path: &str) -> Result<reqwest::Url, UpstreamFailure> {
    let bad = |why: String| {
        UpstreamFailure::new(
            FailureClass::Connect,
            format!("ComfyUI base_url `{base_url}` {why}"),
        )
    };
    let url = reqwest::Url::parse(&format!("{}{path}", base_url.trim_end_matches('/')))
        .map_err(|e| bad(format!("is not a URL: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(bad(format!("has the scheme `{other}`, not http or https"))),
    }
}

fn json_post(url: reqwest::Url, body: &Value) -> UpstreamRequest {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    UpstreamRequest {
        url,
        headers,
        body: body.to_string().into_bytes(),
    }
}

/// `POST {base}/prompt` with the filled workflow; `client_id` ties its `/ws` events to the
/// socket opened with the same id.
pub fn prompt_request(
    base_url: &str,
    workflow: Value,
    client_id: &str,
) -> Result<UpstreamRequest, UpstreamFailure> {
    let body = json!({"prompt": workflow, "client_id": client_id});
    Ok(json_post(endpoint(base_url, "/prompt")?, &body))
}

/// `POST {base}/interrupt` for this prompt (ComfyUI interrupts it only if it is running).
pub fn interrupt_request(
    base_url: &str,
    prompt_id: &str,
) -> Result<UpstreamRequest, UpstreamFailure> {
    let body = json!({"prompt_id": prompt_id});
    Ok(json_post(endpoint(base_url, "/interrupt")?, &body))
}

/// `POST {base}/queue` deleting this prompt if it is still queued (a running one is not
/// touched: interrupt it).
pub fn queue_delete_request(
    base_url: &str,
    prompt_id: &str,
) -> Result<UpstreamRequest, UpstreamFailure> {
    let body = json!({"delete": [prompt_id]});
    Ok(json_post(endpoint(base_url, "/queue")?, &body))
}

/// The prompt id of `POST /prompt`'s answer. A 2xx with a `prompt_id` was queued even when
/// its `node_errors` name output nodes that failed validation (ComfyUI runs the valid
/// outputs), so it is accepted; the missing outputs show in its results.
pub fn decode_submitted(status: u16, body: &[u8]) -> Result<String, UpstreamFailure> {
    if !(200..300).contains(&status) {
        return Err(classify(status, body));
    }
    let mut failure = match serde_json::from_slice::<Value>(body) {
        Ok(parsed) => match parsed.get("prompt_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => return Ok(id.to_string()),
            _ => malformed("the answer to POST /prompt has no prompt_id"),
        },
        Err(e) => malformed(format!("the answer to POST /prompt is not JSON: {e}")),
    };
    failure.status = Some(status);
    Err(failure)
}

/// Classifies a non-2xx answer. A 400 is a workflow ComfyUI refused (validation): its
/// message and the node errors go to the client.
pub fn classify(status: u16, body: &[u8]) -> UpstreamFailure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let class = match status {
        401 | 403 => FailureClass::Auth,
        429 => FailureClass::RateLimited,
        // ComfyUI has every endpoint used here, so a 404 means the base_url leads somewhere
        // else (or a file left /view): a misconfiguration that no retry on this deployment
        // cures, not an outage; it is reported as a refused request.
        400..=499 => FailureClass::InvalidRequest,
        503 => FailureClass::Overloaded,
        _ => FailureClass::Upstream5xx,
    };
    let kind = parsed
        .as_ref()
        .and_then(|b| b.get("error"))
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    UpstreamFailure {
        class,
        status: Some(status),
        detail: format!("HTTP {status} {kind}").trim_end().to_string(),
        vendor_message: parsed.as_ref().and_then(validation_message),
        retry_after: None,
    }
}

/// `error.message` (or the bare `error` string of older servers), its details, then each
/// node error, capped at `MAX_MESSAGE_CHARS`.
fn validation_message(body: &Value) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    match body.get("error") {
        Some(Value::String(s)) if !s.trim().is_empty() => parts.push(s.trim().to_string()),
        Some(error) => {
            let head = [
                non_empty(error.get("message")),
                non_empty(error.get("details")),
            ];
            let head: Vec<&str> = head.into_iter().flatten().collect();
            if !head.is_empty() {
                parts.push(head.join(": "));
            }
        }
        None => {}
    }
    if let Some(Value::Object(nodes)) = body.get("node_errors") {
        for id in sorted_node_ids(nodes) {
            let node = &nodes[id];
            let class = non_empty(node.get("class_type")).unwrap_or("?");
            for error in node
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let what = [
                    non_empty(error.get("message")),
                    non_empty(error.get("details")),
                ];
                let what: Vec<&str> = what.into_iter().flatten().collect();
                parts.push(format!("node {id} ({class}): {}", what.join(": ")));
            }
        }
    }
    let message = parts.join("; ");
    if message.chars().count() > MAX_MESSAGE_CHARS {
        let cut: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
        return Some(format!("{cut}…"));
    }
    (!message.is_empty()).then_some(message)
}

/// A string's trimmed text, if it has any.
fn non_empty(value: Option<&Value>) -> Option<&str> {
    value
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `ws://…/ws?clientId=…` for an `http` base; `None` for `https` (the caller polls history:
/// no TLS for the socket) and for a base that is not a URL.
pub fn ws_url(base_url: &str, client_id: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(base_url).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    url.set_scheme("ws").ok()?;
    let path = format!("{}/ws", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_fragment(None);
    url.set_query(None);
    url.query_pairs_mut().append_pair("clientId", client_id);
    Some(url.into())
}

/// `{base}/history/{prompt_id}`.
pub fn history_url(base_url: &str, prompt_id: &str) -> String {
    let mut segment = String::with_capacity(prompt_id.len());
    for byte in prompt_id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("{}/history/{segment}", base_url.trim_end_matches('/'))
}

/// `{base}/view?filename=…&subfolder=…&type=…`, the bytes of one output file.
pub fn view_url(base_url: &str, file: &OutputFile) -> Result<reqwest::Url, UpstreamFailure> {
    let mut url = endpoint(base_url, "/view")?;
    url.query_pairs_mut()
        .append_pair("filename", &file.filename)
        .append_pair("subfolder", &file.subfolder)
        .append_pair("type", &file.kind);
    Ok(url)
}

/// One `/ws` text frame for the prompt `prompt_id` (binary frames are previews: not for
/// this function). Only text that is not a JSON object with a `type` is malformed; an event
/// of ours missing a field it needs is `Ignored`.
pub fn decode_ws(text: &str, prompt_id: &str) -> Result<WsEvent, UpstreamFailure> {
    let frame: Value = serde_json::from_str(text)
        .map_err(|e| malformed(format!("a /ws frame is not JSON: {e}")))?;
    let Some(kind) = frame.get("type").and_then(Value::as_str) else {
        return Err(malformed("a /ws frame has no `type`"));
    };
    let data = frame.get("data").unwrap_or(&Value::Null);
    if data.get("prompt_id").and_then(Value::as_str) != Some(prompt_id) {
        return Ok(WsEvent::Ignored);
    }
    Ok(match kind {
        "execution_start" => WsEvent::Started,
        "progress" => match (count(data.get("value")), count(data.get("max"))) {
            (Some(value), Some(max)) => WsEvent::Progress { value, max },
            _ => WsEvent::Ignored,
        },
        "executing" if data.get("node").is_some_and(Value::is_null) => WsEvent::Finished,
        "executed" => match data.get("output") {
            Some(Value::Object(output)) => WsEvent::Executed(prefer_saved(node_files(output))),
            _ => WsEvent::Executed(Vec::new()),
        },
        "execution_success" => WsEvent::Succeeded,
        "execution_error" => WsEvent::Failed(error_message(data)),
        "execution_interrupted" => WsEvent::Interrupted,
        _ => WsEvent::Ignored,
    })
}

fn count(value: Option<&Value>) -> Option<u64> {
    let value = value?;
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.round() as u64)
    })
}

/// The answer of `/history/{prompt_id}`: no entry yet is `Pending`; `status_str: "error"`
/// is `Failed` with the `execution_error` (or interrupt) from its messages; a success (or
/// an entry without `status`, as older servers write) lists its output files, in node id
/// order.
pub fn decode_history(body: &[u8], prompt_id: &str) -> Result<HistoryState, UpstreamFailure> {
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("the history answer is not JSON: {e}")))?;
    let Value::Object(entries) = parsed else {
        return Err(malformed("the history answer is not an object"));
    };
    let Some(entry) = entries.get(prompt_id) else {
        return Ok(HistoryState::Pending);
    };
    if !entry.is_object() {
        return Err(malformed("the history entry is not an object"));
    }
    let status = entry.get("status").filter(|s| !s.is_null());
    let field = |name: &str| status.and_then(|s| s.get(name));
    let status_str = field("status_str").and_then(Value::as_str);
    let completed = field("completed").and_then(Value::as_bool);
    if status_str == Some("error") {
        let messages = field("messages").and_then(Value::as_array);
        return Ok(HistoryState::Failed(history_failure(messages)));
    }
    if status.is_some() && status_str != Some("success") && completed != Some(true) {
        return Ok(HistoryState::Failed(format!(
            "ComfyUI reported the status `{}` without completing",
            status_str.unwrap_or("?")
        )));
    }
    let Some(Value::Object(outputs)) = entry.get("outputs") else {
        return Err(malformed("the history entry has no `outputs` object"));
    };
    let files = sorted_node_ids(outputs)
        .into_iter()
        .filter_map(|id| outputs[id].as_object())
        .flat_map(node_files)
        .collect();
    Ok(HistoryState::Succeeded(prefer_saved(files)))
}

/// Why a failed prompt failed, from its history `messages` (`[name, data]` pairs).
fn history_failure(messages: Option<&Vec<Value>>) -> String {
    let messages: Vec<(&str, &Value)> = messages
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m.get(0)?.as_str()?, m.get(1)?)))
        .collect();
    let last = |name: &str| messages.iter().rev().find(|(n, _)| *n == name);
    if let Some((_, data)) = last("execution_error") {
        return error_message(data);
    }
    if let Some((_, data)) = last("execution_interrupted") {
        return format!("interrupted at {}", node_label(data));
    }
    "ComfyUI reported an error without details".into()
}

/// `node 3 (KSampler)`, from an event's `node_id` and `node_type`.
fn node_label(data: &Value) -> String {
    let id = match data.get("node_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "?".into(),
    };
    match data.get("node_type").and_then(Value::as_str) {
        Some(kind) => format!("node {id} ({kind})"),
        None => format!("node {id}"),
    }
}

/// An `execution_error`'s node and exception (`message` on servers that send only that).
fn error_message(data: &Value) -> String {
    let text = |name: &str| {
        data.get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let exception = match (text("exception_type"), text("exception_message")) {
        (Some(kind), Some(message)) => format!("{kind}: {message}"),
        (None, Some(message)) => message.to_string(),
        (Some(kind), None) => kind.to_string(),
        (None, None) => text("message").unwrap_or("execution failed").to_string(),
    };
    format!("{} failed: {exception}", node_label(data))
}

/// The files of one node's output: every key whose value is an array of objects with a
/// `filename` (`images`, `gifs`, `videos`, …); other values (text, numbers) are skipped.
fn node_files(output: &Map<String, Value>) -> Vec<OutputFile> {
    let text =
        |item: &Value, name: &str| item.get(name).and_then(Value::as_str).map(str::to_string);
    output
        .values()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|item| {
            Some(OutputFile {
                filename: text(item, "filename")?,
                subfolder: text(item, "subfolder").unwrap_or_default(),
                kind: text(item, "type").unwrap_or_else(|| "output".into()),
            })
        })
        .collect()
}

/// Saved files (`type: "output"`) when there are any, else all of them: previews
/// (`temp`) are what a workflow without a save node produces, and nothing else.
fn prefer_saved(files: Vec<OutputFile>) -> Vec<OutputFile> {
    if files.iter().any(|f| f.kind == "output") {
        files.into_iter().filter(|f| f.kind == "output").collect()
    } else {
        files
    }
}

/// Node ids in a stable order: numerically per `:`-separated segment (`2` < `10` <
/// `75:3`), text after numbers.
fn sorted_node_ids(nodes: &Map<String, Value>) -> Vec<&str> {
    let key = |id: &str| -> Vec<(u8, u64, String)> {
        id.split(':')
            .map(|seg| match seg.parse::<u64>() {
                Ok(n) => (0, n, String::new()),
                Err(_) => (1, 0, seg.to_string()),
            })
            .collect()
    };
    let mut ids: Vec<&str> = nodes.keys().map(String::as_str).collect();
    ids.sort_by_cached_key(|id| key(id));
    ids
}

/// The content type of an output file, by its extension.
pub fn content_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn malformed(detail: impl Into<String>) -> UpstreamFailure {
    UpstreamFailure::new(FailureClass::MalformedResponse, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ComfyUI's default text-to-image workflow in the API format, with placeholders.
    fn txt2img() -> Value {
        json!({
            "3": {"class_type": "KSampler", "inputs": {"cfg": 8, "denoise": 1,
                "latent_image": ["5", 0], "model": ["4", 0], "negative": ["7", 0],
                "positive": ["6", 0], "sampler_name": "euler", "scheduler": "normal",
                "seed": "{{seed}}", "steps": "{{ steps }}"}},
            "4": {"class_type": "CheckpointLoaderSimple",
                "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
            "5": {"class_type": "EmptyLatentImage",
                "inputs": {"batch_size": 1, "height": "{{height}}", "width": "{{width}}"}},
            "6": {"class_type": "CLIPTextEncode",
                "inputs": {"clip": ["4", 1], "text": "masterpiece, {{prompt}}"}},
            "7": {"class_type": "CLIPTextEncode",
                "inputs": {"clip": ["4", 1], "text": "{{negative_prompt}}"}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage",
                "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}
        })
    }

    fn values() -> Map<String, Value> {
        let Value::Object(map) = json!({"prompt": "a red fox", "negative_prompt": "blurry",
            "width": 768, "height": 512, "seed": 42, "steps": 20})
        else {
            unreachable!()
        };
        map
    }

    fn file(filename: &str, kind: &str) -> OutputFile {
        OutputFile {
            filename: filename.into(),
            subfolder: String::new(),
            kind: kind.into(),
        }
    }

    fn json_body(req: &UpstreamRequest) -> Value {
        serde_json::from_slice(&req.body).unwrap_or_default()
    }

    #[test]
    fn a_txt2img_template_passes_the_check() {
        assert_eq!(check_workflow(&txt2img()), Ok(()));
    }

    #[test]
    fn the_check_names_what_is_wrong() {
        let mut unknown = txt2img();
        unknown["6"]["inputs"]["text"] = json!("a {{ style }} photo");
        let err = check_workflow(&unknown).unwrap_err();
        assert!(
            err.contains("`{{ style }}`") && err.contains("node `6`"),
            "{err}"
        );
        let mut in_key = txt2img();
        in_key["5"]["inputs"]["{{width}}"] = json!(1);
        assert!(
            check_workflow(&in_key)
                .unwrap_err()
                .contains("key `{{width}}`")
        );
        let mut no_class = txt2img();
        no_class["9"] = json!({"inputs": {}});
        assert_eq!(
            check_workflow(&no_class),
            Err("node `9` has no `class_type`".into())
        );
        let mut no_inputs = txt2img();
        no_inputs["9"] = json!({"class_type": "SaveImage"});
        assert_eq!(
            check_workflow(&no_inputs),
            Err("node `9` has no `inputs` object".into())
        );
        assert!(
            check_workflow(&json!([1]))
                .unwrap_err()
                .contains("JSON object")
        );
        assert!(check_workflow(&json!({})).unwrap_err().contains("no nodes"));
        let ui = json!({"nodes": [], "links": [], "version": 0.4});
        assert!(check_workflow(&ui).unwrap_err().contains("UI-format"));
        assert!(
            check_workflow(&json!({"1": "x"}))
                .unwrap_err()
                .contains("not an object")
        );
    }

    #[test]
    fn braces_around_anything_but_a_name_are_text() {
        let mut t = txt2img();
        t["6"]["inputs"]["text"] = json!("{{ }} {{a b}} {{{seed}}} {{ unclosed");
        assert_eq!(check_workflow(&t), Ok(()));
        let filled = fill_workflow(&t, &values());
        assert_eq!(
            filled["6"]["inputs"]["text"],
            "{{ }} {{a b}} {42} {{ unclosed"
        );
    }

    #[test]
    fn a_whole_placeholder_keeps_the_value_type_and_embedded_ones_become_text() {
        let template = json!({
            "seed": "{{seed}}", "width": "{{ width }}", "text": "a {{prompt}} b",
            "mixed": "{{width}}x{{height}}", "nested": [{"deep": ["{{steps}}", "{{prompt}}"]}],
            "{{seed}}": "key untouched", "number": 7, "flag": true,
            "padded": " {{seed}}", "absent": "{{negative_prompt}}", "absent_in": "no {{negative_prompt}}"
        });
        let mut values = values();
        values.remove("negative_prompt");
        let filled = fill_workflow(&template, &values);
        assert_eq!(
            filled,
            json!({
                "seed": 42, "width": 768, "text": "a a red fox b", "mixed": "768x512",
                "nested": [{"deep": [20, "a red fox"]}], "{{seed}}": "key untouched",
                "number": 7, "flag": true, "padded": " 42",
                "absent": "{{negative_prompt}}", "absent_in": "no {{negative_prompt}}"
            })
        );
        let mut null = Map::new();
        null.insert("prompt".into(), Value::Null);
        assert_eq!(fill_workflow(&json!("x{{prompt}}y"), &null), json!("xy"));
    }

    #[test]
    fn the_txt2img_template_is_filled_node_by_node() {
        let filled = fill_workflow(&txt2img(), &values());
        let mut expected = txt2img();
        expected["3"]["inputs"]["seed"] = json!(42);
        expected["3"]["inputs"]["steps"] = json!(20);
        expected["5"]["inputs"]["width"] = json!(768);
        expected["5"]["inputs"]["height"] = json!(512);
        expected["6"]["inputs"]["text"] = json!("masterpiece, a red fox");
        expected["7"]["inputs"]["text"] = json!("blurry");
        assert_eq!(filled, expected);
        assert_eq!(check_workflow(&filled), Ok(()));
    }

    #[test]
    fn the_prompt_request_posts_the_workflow_with_the_client_id() {
        let req = prompt_request("http://gpu:8188/", json!({"3": {}}), "c-1").unwrap();
        assert_eq!(req.url.as_str(), "http://gpu:8188/prompt");
        assert_eq!(req.headers[CONTENT_TYPE], "application/json");
        assert_eq!(
            json_body(&req),
            json!({"prompt": {"3": {}}, "client_id": "c-1"})
        );
        let sub = prompt_request("https://h/comfy", json!({}), "c").unwrap();
        assert_eq!(sub.url.as_str(), "https://h/comfy/prompt");
        for bad in ["not a url", "localhost:8188", ""] {
            let err = prompt_request(bad, json!({}), "c").unwrap_err();
            assert_eq!(err.class, FailureClass::Connect, "{bad}");
        }
    }

    #[test]
    fn interrupt_and_queue_delete_name_the_prompt() {
        let req = interrupt_request("http://h:1", "p-1").unwrap();
        assert_eq!(req.url.as_str(), "http://h:1/interrupt");
        assert_eq!(json_body(&req), json!({"prompt_id": "p-1"}));
        let req = queue_delete_request("http://h:1/", "p-1").unwrap();
        assert_eq!(req.url.as_str(), "http://h:1/queue");
        assert_eq!(json_body(&req), json!({"delete": ["p-1"]}));
        assert!(interrupt_request("::", "p").is_err());
        assert!(queue_delete_request("::", "p").is_err());
    }

    #[test]
    fn a_submission_answer_gives_the_prompt_id() {
        let ok = br#"{"prompt_id": "0b3f-11", "number": 3, "node_errors": {}}"#;
        assert_eq!(decode_submitted(200, ok), Ok("0b3f-11".into()));
        assert_eq!(
            decode_submitted(200, br#"{"prompt_id": "p", "number": 1}"#),
            Ok("p".into())
        );
        let partial = br#"{"prompt_id": "p", "number": 1, "node_errors": {"12": {"errors": []}}}"#;
        assert_eq!(decode_submitted(200, partial), Ok("p".into()));
        for bad in [
            &br#"{"number": 1}"#[..],
            br#"{"prompt_id": ""}"#,
            b"<html>",
            b"",
        ] {
            let err = decode_submitted(200, bad).unwrap_err();
            assert_eq!(err.class, FailureClass::MalformedResponse);
            assert_eq!(err.status, Some(200));
        }
        let err = decode_submitted(400, &validation_body()).unwrap_err();
        assert_eq!(err.class, FailureClass::InvalidRequest);
    }

    fn validation_body() -> Vec<u8> {
        json!({
            "error": {"type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"4": {"errors": [{"type": "value_not_in_list",
                "message": "Value not in list",
                "details": "ckpt_name: 'sdxl.safetensors' not in ['v1-5-pruned-emaonly.safetensors']",
                "extra_info": {"input_name": "ckpt_name"}}],
                "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_validation_error_carries_comfyuis_message_and_the_node_errors() {
        let failure = classify(400, &validation_body());
        assert_eq!(failure.class, FailureClass::InvalidRequest);
        assert_eq!(failure.status, Some(400));
        assert_eq!(failure.detail, "HTTP 400 prompt_outputs_failed_validation");
        assert_eq!(
            failure.vendor_message.as_deref(),
            Some(
                "Prompt outputs failed validation; node 4 (CheckpointLoaderSimple): Value not \
                 in list: ckpt_name: 'sdxl.safetensors' not in ['v1-5-pruned-emaonly.safetensors']"
            )
        );
        let old = classify(400, br#"{"error": "no prompt", "node_errors": []}"#);
        assert_eq!(old.vendor_message.as_deref(), Some("no prompt"));
        let long = json!({"error": {"message": "x".repeat(5000)}}).to_string();
        let message = classify(400, long.as_bytes()).vendor_message.unwrap();
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn statuses_map_to_failure_classes() {
        for (status, class) in [
            (400, FailureClass::InvalidRequest),
            (401, FailureClass::Auth),
            (403, FailureClass::Auth),
            (404, FailureClass::InvalidRequest),
            (413, FailureClass::InvalidRequest),
            (429, FailureClass::RateLimited),
            (500, FailureClass::Upstream5xx),
            (502, FailureClass::Upstream5xx),
            (503, FailureClass::Overloaded),
            (304, FailureClass::Upstream5xx),
        ] {
            let failure = classify(status, b"404: Not Found");
            assert_eq!((failure.class, failure.status), (class, Some(status)));
            assert_eq!(failure.vendor_message, None);
            assert_eq!(failure.detail, format!("HTTP {status}"));
        }
    }

    #[test]
    fn the_socket_url_follows_the_base_for_http_only() {
        assert_eq!(
            ws_url("http://gpu:8188", "c-1").as_deref(),
            Some("ws://gpu:8188/ws?clientId=c-1")
        );
        assert_eq!(
            ws_url("http://gpu:8188/x/", "a b").as_deref(),
            Some("ws://gpu:8188/x/ws?clientId=a+b")
        );
        assert_eq!(ws_url("https://gpu", "c"), None);
        assert_eq!(ws_url("gpu:8188", "c"), None);
        assert_eq!(ws_url("nonsense", "c"), None);
    }

    #[test]
    fn history_and_view_urls_encode_what_they_carry() {
        assert_eq!(
            history_url("http://h:1/", "1b2c-3d"),
            "http://h:1/history/1b2c-3d"
        );
        assert_eq!(
            history_url("http://h", "a/b c"),
            "http://h/history/a%2Fb%20c"
        );
        let out = OutputFile {
            filename: "fox & co 1.png".into(),
            subfolder: "jobs/7".into(),
            kind: "output".into(),
        };
        assert_eq!(
            view_url("http://h:1/", &out).unwrap().as_str(),
            "http://h:1/view?filename=fox+%26+co+1.png&subfolder=jobs%2F7&type=output"
        );
        assert_eq!(
            view_url("ftp://h", &out).unwrap_err().class,
            FailureClass::Connect
        );
    }

    fn frame(kind: &str, data: Value) -> String {
        json!({"type": kind, "data": data}).to_string()
    }

    #[test]
    fn socket_events_of_the_prompt_are_decoded() {
        let p = "p-1";
        let cases = [
            (
                frame("execution_start", json!({"prompt_id": p, "timestamp": 1})),
                WsEvent::Started,
            ),
            (
                frame("execution_cached", json!({"nodes": ["4"], "prompt_id": p})),
                WsEvent::Ignored,
            ),
            (
                frame(
                    "executing",
                    json!({"node": "3", "display_node": "3", "prompt_id": p}),
                ),
                WsEvent::Ignored,
            ),
            (
                frame(
                    "progress",
                    json!({"value": 5, "max": 20, "prompt_id": p, "node": "3"}),
                ),
                WsEvent::Progress { value: 5, max: 20 },
            ),
            (
                frame("progress", json!({"value": "x", "prompt_id": p})),
                WsEvent::Ignored,
            ),
            (
                frame(
                    "executed",
                    json!({"node": "9", "display_node": "9", "prompt_id": p,
                    "output": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "",
                    "type": "output"}, {"filename": "ComfyUI_temp_1.png", "subfolder": "",
                    "type": "temp"}], "text": ["ignored"]}}),
                ),
                WsEvent::Executed(vec![file("ComfyUI_00001_.png", "output")]),
            ),
            (
                frame("executed", json!({"node": "9", "prompt_id": p})),
                WsEvent::Executed(vec![]),
            ),
            (
                frame("execution_success", json!({"prompt_id": p, "timestamp": 2})),
                WsEvent::Succeeded,
            ),
            (
                frame(
                    "executing",
                    json!({"node": null, "display_node": null, "prompt_id": p}),
                ),
                WsEvent::Finished,
            ),
            (
                frame(
                    "execution_interrupted",
                    json!({"prompt_id": p, "node_id": "3",
                    "node_type": "KSampler", "executed": []}),
                ),
                WsEvent::Interrupted,
            ),
            (
                frame(
                    "execution_error",
                    json!({"prompt_id": p, "node_id": "3",
                    "node_type": "KSampler", "executed": ["4"],
                    "exception_message": "CUDA out of memory.\n",
                    "exception_type": "torch.OutOfMemoryError", "traceback": ["..."],
                    "current_inputs": {}, "current_outputs": {}}),
                ),
                WsEvent::Failed(
                    "node 3 (KSampler) failed: torch.OutOfMemoryError: CUDA out of memory.".into(),
                ),
            ),
            (
                frame("execution_start", json!({"prompt_id": "other"})),
                WsEvent::Ignored,
            ),
            (
                frame("executing", json!({"node": null, "prompt_id": "other"})),
                WsEvent::Ignored,
            ),
            (
                frame(
                    "status",
                    json!({"status": {"exec_info": {"queue_remaining": 1}}, "sid": "c"}),
                ),
                WsEvent::Ignored,
            ),
            (
                frame("progress_state", json!({"prompt_id": p, "nodes": {}})),
                WsEvent::Ignored,
            ),
        ];
        for (text, event) in cases {
            assert_eq!(decode_ws(&text, p), Ok(event), "{text}");
        }
    }

    #[test]
    fn unreadable_socket_frames_are_malformed() {
        for text in ["not json", "[1,2]", r#"{"data": {"prompt_id": "p"}}"#, ""] {
            let err = decode_ws(text, "p").unwrap_err();
            assert_eq!(err.class, FailureClass::MalformedResponse, "{text}");
        }
    }

    fn history(entry: Value) -> Vec<u8> {
        json!({"p-1": entry}).to_string().into_bytes()
    }

    #[test]
    fn history_is_pending_until_the_entry_appears() {
        assert_eq!(decode_history(b"{}", "p-1"), Ok(HistoryState::Pending));
        let other = json!({"p-0": {"outputs": {}, "status": {"status_str": "success",
            "completed": true, "messages": []}}});
        assert_eq!(
            decode_history(other.to_string().as_bytes(), "p-1"),
            Ok(HistoryState::Pending)
        );
    }

    #[test]
    fn a_successful_entry_lists_saved_files_in_node_order() {
        let image =
            |name: &str, kind: &str| json!({"filename": name, "subfolder": "", "type": kind});
        let body = history(json!({
            "prompt": [3, "p-1", {}, {"client_id": "c"}, ["9"]],
            "outputs": {
                "10": {"images": [image("b.png", "output")]},
                "9": {"images": [image("a.png", "output")], "text": ["caption"]},
                "75:3": {"gifs": [image("c.gif", "output")], "animated": [true]},
                "2": {"images": [image("preview.png", "temp")]},
                "save": {"videos": [{"filename": "d.mp4", "subfolder": "vid", "type": "output"}]}
            },
            "status": {"status_str": "success", "completed": true, "messages": [
                ["execution_start", {"prompt_id": "p-1", "timestamp": 1}],
                ["execution_success", {"prompt_id": "p-1", "timestamp": 2}]]},
            "meta": {}
        }));
        let HistoryState::Succeeded(files) = decode_history(&body, "p-1").unwrap() else {
            panic!("not a success")
        };
        let names: Vec<&str> = files.iter().map(|f| f.filename.as_str()).collect();
        assert_eq!(names, ["a.png", "b.png", "c.gif", "d.mp4"]);
        assert_eq!(files[3].subfolder, "vid");
        let previews_only = history(
            json!({"outputs": {"5": {"images": [image("t.png", "temp")]}},
            "status": {"status_str": "success", "completed": true, "messages": []}}),
        );
        assert_eq!(
            decode_history(&previews_only, "p-1"),
            Ok(HistoryState::Succeeded(vec![file("t.png", "temp")]))
        );
        let old_server = history(json!({"outputs": {"9": {"images": [image("a.png", "output")]}}}));
        assert_eq!(
            decode_history(&old_server, "p-1"),
            Ok(HistoryState::Succeeded(vec![file("a.png", "output")]))
        );
    }

    #[test]
    fn a_failed_entry_says_which_node_failed_or_that_it_was_interrupted() {
        let failed = history(json!({"outputs": {}, "status": {"status_str": "error",
            "completed": false, "messages": [
                ["execution_start", {"prompt_id": "p-1"}],
                ["execution_error", {"prompt_id": "p-1", "node_id": "3", "node_type": "KSampler",
                    "exception_message": "boom", "exception_type": "RuntimeError"}]]}}));
        assert_eq!(
            decode_history(&failed, "p-1"),
            Ok(HistoryState::Failed(
                "node 3 (KSampler) failed: RuntimeError: boom".into()
            ))
        );
        let interrupted = history(json!({"outputs": {}, "status": {"status_str": "error",
            "completed": false, "messages": [["execution_interrupted", {"prompt_id": "p-1",
            "node_id": "3", "node_type": "KSampler", "executed": []}]]}}));
        assert_eq!(
            decode_history(&interrupted, "p-1"),
            Ok(HistoryState::Failed(
                "interrupted at node 3 (KSampler)".into()
            ))
        );
        let bare = history(json!({"outputs": {}, "status": {"status_str": "error"}}));
        assert!(
            matches!(decode_history(&bare, "p-1"), Ok(HistoryState::Failed(m)) if m.contains("without details"))
        );
        let odd = history(
            json!({"outputs": {}, "status": {"status_str": "running", "completed": false}}),
        );
        assert!(
            matches!(decode_history(&odd, "p-1"), Ok(HistoryState::Failed(m)) if m.contains("`running`"))
        );
    }

    #[test]
    fn unreadable_history_is_malformed() {
        for body in [
            &b"garbage"[..],
            b"[]",
            br#"{"p-1": 3}"#,
            br#"{"p-1": {"status": {"status_str": "success", "completed": true}}}"#,
        ] {
            let err = decode_history(body, "p-1").unwrap_err();
            assert_eq!(err.class, FailureClass::MalformedResponse);
        }
    }

    #[test]
    fn content_types_follow_the_extension() {
        for (name, kind) in [
            ("ComfyUI_00001_.png", "image/png"),
            ("a.JPG", "image/jpeg"),
            ("a.jpeg", "image/jpeg"),
            ("a.webp", "image/webp"),
            ("a.gif", "image/gif"),
            ("a.mp4", "video/mp4"),
            ("a.webm", "video/webm"),
            ("a.json", "application/json"),
            ("a.txt", "text/plain; charset=utf-8"),
            ("a.safetensors", "application/octet-stream"),
            ("noext", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), kind, "{name}");
        }
    }
}

// ---- Settings (a deployment's `workflow` and `settings`) ----

/// A ComfyUI deployment's `settings`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComfyUiOptions {
    /// How often `/history/{prompt_id}` is asked while a prompt runs (default 1000 ms);
    /// progress comes over `/ws` in between.
    pub poll_interval_ms: Option<u64>,
    /// Longest a prompt may run (default `jobs.timeout_ms`).
    pub timeout_ms: Option<u64>,
}

/// A ComfyUI deployment: its options and its workflow template (API format).
#[derive(Debug, Clone, PartialEq)]
pub struct ComfyUiSettings {
    pub options: ComfyUiOptions,
    pub workflow: serde_json::Value,
}
