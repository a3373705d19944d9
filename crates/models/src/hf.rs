//! Downloading one file from the Hugging Face hub (or any server with the same `resolve` URLs:
//! a mirror, or the stand-in server of the tests).
//!
//! The hub answers `GET {endpoint}/{owner}/{repo}/resolve/main/{file}` for a large file with a
//! redirect to its CDN, and puts the file's LFS sha256 in `X-Linked-Etag` on that redirect.
//! So redirects are followed by hand here: to read that header, and to send the token only
//! to the endpoint's own host, never to the CDN.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{AUTHORIZATION, ETAG, HeaderMap, LOCATION};

use crate::staging::{Staging, WrittenFile, byte_bar, is_sha256_hex, verify_sha256};

/// The hub's endpoint when `HF_ENDPOINT` is not set.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

const MAX_REDIRECTS: usize = 10;

/// A file to fetch from a hub repository's `main` revision.
pub(crate) struct HubFile<'a> {
    pub endpoint: &'a str,
    pub token: Option<&'a str>,
    pub owner: &'a str,
    pub repo: &'a str,
    pub file: &'a str,
}

impl HubFile<'_> {
    /// The `source` text, for error messages.
    fn spec(&self) -> String {
        format!("hf:{}/{}/{}", self.owner, self.repo, self.file)
    }

    fn url(&self) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(self.endpoint)
            .with_context(|| format!("HF_ENDPOINT {:?} is not a URL", self.endpoint))?;
        {
            let Ok(mut segments) = url.path_segments_mut() else {
                bail!("HF_ENDPOINT {:?} cannot take a path", self.endpoint);
            };
            segments
                .pop_if_empty()
                .extend([self.owner, self.repo, "resolve", "main"])
                .extend(self.file.split('/'));
        }
        Ok(url)
    }
}

/// Downloads `hub_file` into `staging` as `relative`, verifies its sha256 against
/// `expected_sha256`, else against the hub's `X-Linked-Etag`/`ETag` when that is a sha256,
/// and returns what was written. On any error the caller's staging directory is dropped,
/// taking the partial file with it.
pub(crate) fn download(
    hub_file: &HubFile<'_>,
    expected_sha256: Option<&str>,
    staging: &Staging,
    relative: &Path,
    progress: bool,
) -> anyhow::Result<WrittenFile> {
    let spec = hub_file.spec();
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(30))
        // In the blocking client this bounds each read, so it catches a stalled transfer
        // without capping a long one.
        .timeout(Duration::from_secs(120))
        .user_agent(concat!("verre/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;

    let (mut response, url, hub_sha256) = get_following_redirects(&client, hub_file)?;
    let expected = expected_sha256
        .map(str::to_string)
        .or(hub_sha256)
        .or_else(|| sha256_from_etag(response.headers().get(ETAG)));
    let total = response.content_length();

    let bar = byte_bar(progress, total, format!("pulling {spec}"));
    let written = staging
        .write_file(relative, &mut response, &bar, "the response body")
        .with_context(|| format!("{spec}: downloading {url}"))?;
    bar.finish_and_clear();

    if let Some(total) = total
        && written.size_bytes != total
    {
        bail!(
            "{spec}: the connection closed after {} of {total} bytes from {url}",
            written.size_bytes
        );
    }
    match &expected {
        Some(expected) => verify_sha256(&format!("{spec} from {url}"), expected, &written.sha256)?,
        None => tracing::warn!(
            "{spec}: the server sent no sha256 for {url}; recorded {} unverified",
            written.sha256
        ),
    }
    Ok(written)
}

/// GETs the file, following up to [`MAX_REDIRECTS`] redirects; returns the final successful
/// response, its URL, and the sha256 from an `X-Linked-Etag` seen on the way.
fn get_following_redirects(
    client: &Client,
    hub_file: &HubFile<'_>,
) -> anyhow::Result<(Response, reqwest::Url, Option<String>)> {
    let spec = hub_file.spec();
    let first = hub_file.url()?;
    let mut url = first.clone();
    let mut linked_sha256 = None;
    for _ in 0..=MAX_REDIRECTS {
        let mut request = client.get(url.clone());
        if let Some(token) = hub_file.token
            && url.origin() == first.origin()
        {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = request
            .send()
            .with_context(|| format!("{spec}: GET {url} failed"))?;
        if let Some(sha256) = sha256_from_etag(response.headers().get("x-linked-etag")) {
            linked_sha256 = Some(sha256);
        }
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|value| value.to_str().ok())
                .with_context(|| format!("{spec}: {status} from {url} without a Location"))?;
            url = url
                .join(location)
                .with_context(|| format!("{spec}: bad redirect {location:?} from {url}"))?;
            continue;
        }
        if !status.is_success() {
            bail!("{}", status_error(&spec, status, &url, response.headers()));
        }
        return Ok((response, url, linked_sha256));
    }
    bail!("{spec}: more than {MAX_REDIRECTS} redirects from {first}")
}

/// The error for a failed status, with what to check.
fn status_error(spec: &str, status: StatusCode, url: &reqwest::Url, headers: &HeaderMap) -> String {
    // The hub explains itself in X-Error-Message ("Access to model ... is restricted").
    let detail = headers
        .get("x-error-message")
        .and_then(|value| value.to_str().ok())
        .map(|message| format!(" ({message})"))
        .unwrap_or_default();
    let hint = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
            "; check the repo and file name, and HF_TOKEN for gated or private models"
        }
        _ => "",
    };
    format!("{spec}: {status} at {url}{detail}{hint}")
}

/// The sha256 in an ETag-style header (`"abc..."`, `W/"abc..."`), if it holds one.
fn sha256_from_etag(value: Option<&reqwest::header::HeaderValue>) -> Option<String> {
    let text = value?.to_str().ok()?;
    let text = text.trim().trim_start_matches("W/").trim_matches('"');
    is_sha256_hex(text).then(|| text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn etags_that_are_sha256() {
        let sha = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
        for text in [
            format!("\"{sha}\""),
            format!("W/\"{sha}\""),
            sha.to_uppercase(),
        ] {
            let value = HeaderValue::from_str(&text).unwrap();
            assert_eq!(sha256_from_etag(Some(&value)).as_deref(), Some(sha));
        }
        let git_sha1 = HeaderValue::from_static("\"0a1b2c3d4e5f60718293a4b5c6d7e8f901234567\"");
        assert_eq!(sha256_from_etag(Some(&git_sha1)), None);
    }

    #[test]
    fn urls_are_built_and_escaped() {
        let hub_file = HubFile {
            endpoint: "http://127.0.0.1:9/mirror/",
            token: None,
            owner: "o",
            repo: "r",
            file: "sub dir/m#1.gguf",
        };
        assert_eq!(
            hub_file.url().unwrap().as_str(),
            "http://127.0.0.1:9/mirror/o/r/resolve/main/sub%20dir/m%231.gguf"
        );
    }
}
