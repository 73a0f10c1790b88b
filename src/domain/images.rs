//! An image generation request (OpenAI's `POST /v1/images/generations` shape, with
//! `seed`, `negative_prompt` and `steps` as extensions), validated once at the edge.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// How the client wants its images: a URL on the gateway (the stored artifact) or the
/// bytes in base64 in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Url,
    B64Json,
}

/// Most images one request may ask for (OpenAI's own limit).
pub const MAX_IMAGES: u32 = 10;

#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub model: String,
    pub prompt: String,
    pub n: u32,
    /// `WIDTHxHEIGHT`, when given.
    pub size: Option<(u32, u32)>,
    pub response_format: ImageFormat,
    pub seed: Option<u64>,
    pub negative_prompt: Option<String>,
    pub steps: Option<u32>,
    /// The body as the client sent it (an OpenAI-compatible vendor gets it with only the
    /// model, and `response_format`, replaced).
    pub body: Map<String, Value>,
}

impl ImageRequest {
    /// Reads and validates a request body (already JSON, the job's own fields taken out
    /// by `http::jobs::JobFields`).
    pub fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        let text = |name: &str| -> Result<Option<String>, ApiError> {
            match body.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ApiError::invalid(
                    name,
                    format!("`{name}` must be a string"),
                )),
            }
        };
        let whole = |name: &str, max: u64| -> Result<Option<u64>, ApiError> {
            match body.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().filter(|n| *n <= max).map(Some).ok_or_else(|| {
                    ApiError::invalid(
                        name,
                        format!("`{name}` must be a whole number from 0 to {max}"),
                    )
                }),
            }
        };
        let model = text("model")?
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ApiError::invalid("model", "`model` is required"))?;
        if model.len() > 256 {
            return Err(ApiError::invalid(
                "model",
                "`model` is longer than 256 bytes",
            ));
        }
        let prompt = text("prompt")?
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| ApiError::invalid("prompt", "`prompt` is required"))?;
        let n = whole("n", u64::from(MAX_IMAGES))?.unwrap_or(1) as u32;
        if n == 0 {
            return Err(ApiError::invalid("n", "`n` must be at least 1"));
        }
        let size = match text("size")?.as_deref() {
            None | Some("auto") => None,
            Some(s) => Some(parse_size(s).ok_or_else(|| {
                ApiError::invalid(
                    "size",
                    "`size` must be `WIDTHxHEIGHT` (e.g. `1024x1024`) or `auto`",
                )
            })?),
        };
        let response_format = match text("response_format")?.as_deref() {
            None | Some("url") => ImageFormat::Url,
            Some("b64_json") => ImageFormat::B64Json,
            Some(_) => {
                return Err(ApiError::invalid(
                    "response_format",
                    "`response_format` must be `url` or `b64_json`",
                ));
            }
        };
        let seed = whole("seed", u64::MAX)?;
        let steps = whole("steps", 10_000)?.map(|s| s as u32);
        let negative_prompt = text("negative_prompt")?;
        if body
            .get("stream")
            .is_some_and(|v| v.as_bool() == Some(true))
        {
            return Err(ApiError::invalid(
                "stream",
                "image generations do not stream; follow a job with `GET /v1/jobs/{id}/events`",
            ));
        }
        Ok(Self {
            model,
            prompt,
            n,
            size,
            response_format,
            seed,
            negative_prompt,
            steps,
            body,
        })
    }
}

/// One image as a vendor answered it: its bytes, or a URL the gateway fetches.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageData {
    Bytes(Vec<u8>),
    Url(String),
}

/// One image of an answer, before the gateway stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorImage {
    pub data: ImageData,
    pub revised_prompt: Option<String>,
}

/// One generated image, fetched: what becomes a job's artifact.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub bytes: actix_web::web::Bytes,
    pub content_type: String,
    pub revised_prompt: Option<String>,
}

/// The content type of image bytes by their signature (PNG, JPEG, WebP, GIF), else PNG's
/// (what OpenAI answers by default).
pub fn sniff_content_type(bytes: &[u8]) -> &'static str {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => "image/webp",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        _ => "image/png",
    }
}

/// `1024x768` → (1024, 768); each side from 1 to 16384.
fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X'])?;
    let side = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=16_384).contains(n))
    };
    Some((side(w)?, side(h)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<ImageRequest, ApiError> {
        match body {
            Value::Object(map) => ImageRequest::parse(map),
            _ => unreachable!("the tests pass objects"),
        }
    }

    #[test]
    fn a_full_request_reads_every_field() {
        let req = parse(
            json!({"model": "sd", "prompt": "a cat", "n": 2, "size": "512x768",
            "response_format": "b64_json", "seed": 42, "negative_prompt": "dogs", "steps": 20}),
        )
        .unwrap();
        assert_eq!(
            (req.n, req.size, req.seed, req.steps),
            (2, Some((512, 768)), Some(42), Some(20))
        );
        assert_eq!(req.response_format, ImageFormat::B64Json);
        assert_eq!(req.negative_prompt.as_deref(), Some("dogs"));
        assert_eq!(req.body.len(), 8, "the body is kept as sent");
    }

    #[test]
    fn bad_fields_name_their_param() {
        for (body, param) in [
            (json!({"prompt": "x"}), "model"),
            (json!({"model": "m"}), "prompt"),
            (json!({"model": "m", "prompt": "x", "n": 0}), "n"),
            (json!({"model": "m", "prompt": "x", "n": 11}), "n"),
            (json!({"model": "m", "prompt": "x", "size": "big"}), "size"),
            (json!({"model": "m", "prompt": "x", "size": "0x10"}), "size"),
            (
                json!({"model": "m", "prompt": "x", "response_format": "png"}),
                "response_format",
            ),
            (json!({"model": "m", "prompt": "x", "seed": -1}), "seed"),
            (
                json!({"model": "m", "prompt": "x", "stream": true}),
                "stream",
            ),
        ] {
            let error = parse(body).err().unwrap();
            assert_eq!(error.param.as_deref(), Some(param));
        }
    }
}
