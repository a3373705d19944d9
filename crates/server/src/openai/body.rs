//! A `/v1` request body, read and parsed once at the edge.
//!
//! [`read_once`] buffers the body of each `/v1` POST (up to [`MAX_BODY_BYTES`]) and parses
//! it into a JSON object with every top-level key checked for a duplicate, before the
//! ledger, the gateway and the handlers run. Each of them reads the same [`ApiBody`] from
//! the request's extensions: the `model` a key limit is checked against is the `model` the
//! handler serves. A middleware that rewrites the request (the gateway naming a local
//! model, the ledger asking a stream for its usage) puts the rewritten body back with
//! [`ApiBody::into_request`].

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::error::ApiError;

/// The largest request body read.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// The parsed body: its bytes and the object they hold.
#[derive(Debug, Clone)]
pub struct ApiBody {
    bytes: Bytes,
    object: Arc<Map<String, Value>>,
}

/// What [`read_once`] found: the body, or why it is not one (answered by whoever needs
/// the body: the gateway before any limit, else the handler).
#[derive(Debug, Clone)]
pub struct Parsed(pub Result<ApiBody, ApiError>);

impl ApiBody {
    /// Parse a body: a JSON object, each top-level key once.
    pub fn parse(bytes: Bytes) -> Result<Self, ApiError> {
        let object = parse_object(&bytes)?;
        Ok(Self {
            bytes,
            object: Arc::new(object),
        })
    }

    /// A body made from an object (serialised once, here).
    pub fn from_object(object: Map<String, Value>) -> Result<Self, ApiError> {
        let bytes = serde_json::to_vec(&object).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Self {
            bytes: Bytes::from(bytes),
            object: Arc::new(object),
        })
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn object(&self) -> &Map<String, Value> {
        &self.object
    }

    /// `model`, when it is a string.
    pub fn model(&self) -> Option<&str> {
        self.object.get("model").and_then(Value::as_str)
    }

    /// A copy of the object, to rewrite.
    pub fn to_object(&self) -> Map<String, Value> {
        self.object.as_ref().clone()
    }

    /// `parts` with this body: in the extensions and as the bytes.
    pub fn into_request(self, mut parts: axum::http::request::Parts) -> Request {
        let bytes = self.bytes.clone();
        parts.extensions.insert(Parsed(Ok(self)));
        Request::from_parts(parts, Body::from(bytes))
    }
}

/// The body as a JSON object whose top-level keys each appear once. JSON parsers disagree
/// on which duplicate wins (serde keeps the last, others the first), so a limit checked
/// against one `model` and a request served as the other would be a bypass.
fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    use serde::de::{Deserializer, Error, MapAccess, Visitor};

    struct Object;
    impl<'de> Visitor<'de> for Object {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut object = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let value: Value = map.next_value()?;
                if object.contains_key(&key) {
                    return Err(A::Error::custom(format!("{DUPLICATE_MARK}{key}")));
                }
                object.insert(key, value);
            }
            Ok(object)
        }
    }
    const DUPLICATE_MARK: &str = "duplicate top-level key: ";

    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let object = deserializer.deserialize_any(Object).and_then(|object| {
        deserializer.end()?;
        Ok(object)
    });
    match object {
        Ok(object) => Ok(object),
        Err(e) if e.is_data() && e.to_string().starts_with(DUPLICATE_MARK) => {
            let rest = &e.to_string()[DUPLICATE_MARK.len()..];
            // serde_json appends " at line L column C".
            let key = rest.rsplit_once(" at line ").map_or(rest, |(key, _)| key);
            Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                message: format!(
                    "the request has the key `{key}` more than once; send each key once"
                ),
                kind: "invalid_request_error",
                param: Some(key.to_string()),
                code: Some("duplicate_key"),
            })
        }
        // Valid JSON of another type.
        Err(e) if e.is_data() => Err(ApiError::invalid_json(
            "the request body must be a JSON object",
            None,
        )),
        Err(e) => Err(ApiError::invalid_json(
            format!("the request body is not valid JSON: {e}"),
            None,
        )),
    }
}

/// The middleware outermost on `/v1`: read each POST's body once and leave [`Parsed`] in
/// the request's extensions (the bytes stay the body, for whoever streams them on).
pub async fn read_once(request: Request, next: Next) -> Response {
    if request.method() != Method::POST || !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::bad_request(format!("reading the request body: {e}")).into_response();
        }
    };
    parts
        .extensions
        .insert(Parsed(ApiBody::parse(bytes.clone())));
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    /// The body [`read_once`] parsed; read here when the route is served without it.
    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(Parsed(parsed)) = request.extensions().get::<Parsed>() {
            return parsed.clone();
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        ApiBody::parse(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_one_object_with_each_key_once() {
        let body = ApiBody::parse(Bytes::from_static(br#"{"model": "m", "n": 1}"#)).unwrap();
        assert_eq!(body.model(), Some("m"));
        let e = ApiBody::parse(Bytes::from_static(br#"{"model": "a", "model": "b"}"#)).unwrap_err();
        assert_eq!(
            (e.code, e.param.as_deref()),
            (Some("duplicate_key"), Some("model"))
        );
        // Nested duplicates are the handler's business, not a bypass of the limits.
        assert!(ApiBody::parse(Bytes::from_static(br#"{"a": {"b": 1, "b": 2}}"#)).is_ok());
        let e = ApiBody::parse(Bytes::from_static(b"[1]")).unwrap_err();
        assert!(e.message.contains("must be a JSON object"), "{}", e.message);
        let e = ApiBody::parse(Bytes::from_static(b"{\"a\": ")).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = ApiBody::parse(Bytes::from_static(b"{} {}")).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }
}
