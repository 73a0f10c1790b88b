//! A deployment's response script on the relay: a blocking answer is rewritten whole; a
//! stream is rewritten event by event (each event whose `data` is a JSON object goes
//! through `on_response`, `[DONE]` and anything else as it came) and handed on as the
//! upstream's bytes would be, so the decoder, the accounting and a same-dialect
//! passthrough all see the rewritten events. With no script, nothing here runs.

use actix_web::web::Bytes;
use futures_util::StreamExt;

use super::UpstreamBody;
use crate::actors::router::Route;
use crate::domain::sse::{SseEvent, SseParser};
use crate::providers::UpstreamFailure;
use crate::scripts::{Hook, Scripts};

/// A complete answer, through the deployment's response script if it has one.
pub(super) async fn answer(
    route: &Route,
    scripts: &Scripts,
    bytes: Bytes,
) -> Result<Bytes, UpstreamFailure> {
    let Some(name) = &route.deployment.config.response_script else {
        return Ok(bytes);
    };
    Ok(
        match scripts.transform(name, Hook::OnResponse, &bytes).await? {
            Some(rewritten) => Bytes::from(rewritten),
            None => bytes,
        },
    )
}

struct Rewriting {
    upstream: UpstreamBody,
    parser: SseParser,
    scripts: Scripts,
    name: String,
    failed: bool,
}

/// A stream, through the deployment's response script if it has one. A chunk that
/// completes no event yields nothing (an empty chunk, so idle timeouts still see it).
pub(super) fn events(
    route: &Route,
    scripts: &Scripts,
    upstream: UpstreamBody,
    max_event_bytes: usize,
) -> UpstreamBody {
    let Some(name) = route.deployment.config.response_script.clone() else {
        return upstream;
    };
    let state = Rewriting {
        upstream,
        parser: SseParser::new(max_event_bytes),
        scripts: scripts.clone(),
        name,
        failed: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.failed {
            return None;
        }
        let chunk = match s.upstream.next().await? {
            Ok(chunk) => chunk,
            Err(failure) => {
                s.failed = true;
                return Some((Err(failure), s));
            }
        };
        let rewritten = match s.parser.push(&chunk) {
            Ok(events) => s.rewrite(events).await,
            Err(e) => Err(super::stream::oversized(e)),
        };
        s.failed = rewritten.is_err();
        Some((rewritten, s))
    })
    .boxed_local()
}

impl Rewriting {
    async fn rewrite(&self, events: Vec<SseEvent>) -> Result<Bytes, UpstreamFailure> {
        let mut out = Vec::new();
        for mut event in events {
            if let Some(data) = self
                .scripts
                .transform(&self.name, Hook::OnResponse, event.data.as_bytes())
                .await?
            {
                event.data = String::from_utf8(data).map_err(|e| {
                    UpstreamFailure::from(crate::scripts::ScriptError {
                        script: self.name.clone(),
                        reason: e.to_string(),
                    })
                })?;
            }
            write_event(&mut out, &event);
        }
        Ok(Bytes::from(out))
    }
}

/// `event` in SSE framing.
fn write_event(out: &mut Vec<u8>, event: &SseEvent) {
    if let Some(name) = &event.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in event.data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_written_again_parses_back_the_same() {
        let event = SseEvent {
            event: Some("content_block_delta".into()),
            data: "{\"a\":1}\nsecond line".into(),
        };
        let mut out = Vec::new();
        write_event(&mut out, &event);
        let parsed = SseParser::new(1024).push(&out).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].event, event.event);
        assert_eq!(parsed[0].data, event.data);
    }
}
