//! A message's text as pages: the unit that the reading budget counts, that chunks are
//! made of, and that an extracted value cites.
//!
//! [`message_pages`] turns a message's stored parts into [`Page`]s (the headers, each body,
//! each page of a PDF, each other attachment); [`plan`] applies the pipeline's budget
//! ([`Budget`]: pages and tokens per message) and packs what is read into [`Chunk`]s of at
//! most one model call each, splitting only on page, then section (blank line), then line
//! boundaries. What the budget leaves out is listed as [`Unread`] ranges, kept with the
//! message and shown in review.

use serde::Serialize;
use serde_json::Value;
use verre_store::PartRow;

/// One page of a message's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    /// The part it belongs to (`parts.idx`; 0 is the headers).
    pub part: i64,
    /// The part's kind: `headers`, `text`, `html` or `attachment`.
    pub kind: String,
    /// The attachment's file name, when it has one.
    pub file: Option<String>,
    /// 1-based page number in its document (PDFs); None for a part without pages.
    pub number: Option<u32>,
    pub text: String,
}

impl Page {
    /// "contract.pdf p. 37", "the mail body".
    pub fn describe(&self) -> String {
        let name = self
            .file
            .clone()
            .unwrap_or_else(|| match self.kind.as_str() {
                "headers" => "the headers".to_string(),
                "attachment" => "an attachment".to_string(),
                _ => "the mail body".to_string(),
            });
        match self.number {
            Some(n) => format!("{name} p. {n}"),
            None => name,
        }
    }
}

/// A message's parts as pages, in part order. An attachment that could not be read is a
/// page saying so (the model is told it exists).
pub fn message_pages(parts: &[PartRow]) -> Vec<Page> {
    let mut pages = Vec::new();
    for p in parts {
        let page = |number: Option<u32>, text: String| Page {
            part: p.idx,
            kind: p.kind.clone(),
            file: p.filename.clone(),
            number,
            text,
        };
        let numbered = p.pages.as_ref().and_then(Value::as_array);
        match (numbered, p.text.as_deref()) {
            (Some(numbered), _) if !numbered.is_empty() => {
                for (i, text) in numbered.iter().enumerate() {
                    let text = text.as_str().unwrap_or("").trim().to_string();
                    pages.push(page(Some(i as u32 + 1), text));
                }
            }
            (_, Some(text)) => pages.push(page(None, text.trim().to_string())),
            (_, None) if p.kind == "attachment" => pages.push(page(
                None,
                format!(
                    "[attachment {} ({}): not readable]",
                    p.filename.as_deref().unwrap_or("unnamed"),
                    p.content_type
                ),
            )),
            (_, None) => {}
        }
    }
    pages
}

/// The pages of a file given by its user (`verre summarize`): a PDF page by page, a mail
/// (`.eml`) as its parts, anything else as UTF-8 text (Markdown, plain text). Read in
/// this process: for files from outside, the intake's parser child reads mail.
pub fn file_pages(name: &str, bytes: &[u8]) -> anyhow::Result<Vec<Page>> {
    use anyhow::Context as _;
    let lower = name.to_ascii_lowercase();
    if bytes.starts_with(b"%PDF-") || lower.ends_with(".pdf") {
        let texts = crate::parse::pdf_pages(bytes)
            .map_err(|e| anyhow::anyhow!("reading the PDF {name}: {e}"))?;
        let file = std::path::Path::new(name)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned());
        return Ok(texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| Page {
                part: 1,
                kind: "attachment".into(),
                file: file.clone(),
                number: Some(i as u32 + 1),
                text,
            })
            .collect());
    }
    if lower.ends_with(".eml") {
        let parsed =
            crate::parse::parse_mail(bytes).map_err(|e| anyhow::anyhow!("reading {name}: {e}"))?;
        let parts: Vec<PartRow> = parsed
            .parts
            .into_iter()
            .map(|p| PartRow {
                idx: p.idx,
                kind: p.kind,
                filename: p.filename,
                content_type: p.content_type,
                size: p.size,
                supported: p.supported,
                note: p.note,
                text: p.text,
                pages: p.pages.map(|p| serde_json::json!(p)),
            })
            .collect();
        return Ok(message_pages(&parts));
    }
    let text = std::str::from_utf8(bytes)
        .with_context(|| format!("{name} is neither a PDF, a mail (.eml) nor UTF-8 text"))?;
    Ok(vec![Page {
        part: 1,
        kind: "text".into(),
        file: None,
        number: None,
        text: text.to_string(),
    }])
}

/// How much of one message the extraction reads (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Document pages (PDF) read per message, all documents together. A part without
    /// pages (a mail body, a text attachment) counts against the tokens only.
    pub max_pages: usize,
    /// Tokens read per message, all chunks together (estimated: [`tokens`]).
    pub max_tokens: usize,
    /// Tokens one model call reads at most (a chunk).
    pub chunk_tokens: usize,
}

/// Tokens of a text as the budget counts them: about four characters a token, which is
/// what the BPE vocabularies of the default models give on European-language prose. The
/// pipeline does not hold the model's tokenizer (it calls models through `/v1`).
pub fn tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// A run of pages one document did not have read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unread {
    pub part: i64,
    pub file: Option<String>,
    /// First and last page not read (None for a part without pages).
    pub first: Option<u32>,
    pub last: Option<u32>,
    pub reason: String,
}

impl Unread {
    /// "contract.pdf: pages 41-50 not read: budget (max_pages = 40)".
    pub fn line(&self) -> String {
        let name = self.file.as_deref().unwrap_or("the mail body");
        match (self.first, self.last) {
            (Some(a), Some(b)) if a == b => format!("{name}: page {a} not read: {}", self.reason),
            (Some(a), Some(b)) => format!("{name}: pages {a}-{b} not read: {}", self.reason),
            _ => format!("{name}: not read: {}", self.reason),
        }
    }
}

/// One model call's share of a message: the headers (in every chunk, so each call knows
/// whose mail it reads) and a run of pages or pieces of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub pages: Vec<Page>,
}

impl Chunk {
    /// The chunk as the extraction prompt's `document`: the headers, the bodies, each
    /// attachment introduced by its name and each PDF page by `[page N]`, as
    /// [`crate::parse::document_text`] writes a whole message.
    pub fn document(&self) -> String {
        render(self.pages.iter())
    }

    /// The bodies only (`body`).
    pub fn body(&self) -> String {
        render(
            self.pages
                .iter()
                .filter(|p| p.kind == "text" || p.kind == "html"),
        )
    }

    /// The attachments only (`attachments`).
    pub fn attachments(&self) -> String {
        render(self.pages.iter().filter(|p| p.kind == "attachment"))
    }

    /// "pages 12-15 of contract.pdf" for the prompt and the logs.
    pub fn span(&self) -> String {
        let numbered: Vec<&Page> = self.pages.iter().filter(|p| p.number.is_some()).collect();
        match (numbered.first(), numbered.last()) {
            (Some(a), Some(b)) => {
                let name = a.file.as_deref().unwrap_or("the document");
                let (a, b) = (a.number.unwrap_or(0), b.number.unwrap_or(0));
                if a == b {
                    format!("page {a} of {name}")
                } else {
                    format!("pages {a}-{b} of {name}")
                }
            }
            _ => "the mail".to_string(),
        }
    }

    /// The pages that are not the headers (what a value found here can cite).
    pub fn content(&self) -> impl Iterator<Item = &Page> {
        self.pages.iter().filter(|p| p.kind != "headers")
    }
}

fn render<'a>(pages: impl Iterator<Item = &'a Page>) -> String {
    let mut doc = String::new();
    let mut last_part = None;
    for p in pages {
        let new_part = last_part != Some(p.part);
        last_part = Some(p.part);
        match p.kind.as_str() {
            "headers" => {}
            "attachment" if new_part && !p.text.starts_with("[attachment ") => {
                doc.push_str(&format!(
                    "\n[attachment {}]\n",
                    p.file.as_deref().unwrap_or("unnamed")
                ))
            }
            "attachment" if new_part => doc.push('\n'),
            _ if new_part => doc.push('\n'),
            _ => {}
        }
        if let Some(n) = p.number {
            if !new_part {
                doc.push('\n');
            }
            doc.push_str(&format!("[page {n}]\n"));
        }
        doc.push_str(p.text.trim());
        doc.push('\n');
    }
    doc.trim().to_string()
}

/// Most model calls one message has in flight at once. Every chunk of a usual document is
/// sent at once (the engine batches them); past this, calls wait for earlier ones, so a
/// 300-page message does not fill the engine's waiting queue (64 by default) and get
/// refused.
pub const MAX_CALLS_IN_FLIGHT: usize = 32;

/// Run `calls` with at most [`MAX_CALLS_IN_FLIGHT`] at once, results in their order.
pub async fn all_in_order<T>(calls: Vec<crate::BoxFuture<'_, T>>) -> Vec<T> {
    use futures_util::StreamExt as _;
    futures_util::stream::iter(calls)
        .buffered(MAX_CALLS_IN_FLIGHT)
        .collect()
        .await
}

/// What the extraction reads of a message, and what it leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub chunks: Vec<Chunk>,
    pub unread: Vec<Unread>,
    /// Document pages read, and in all.
    pub pages_read: usize,
    pub pages_total: usize,
}

impl Plan {
    /// Every page the chunks read, in order, the headers once.
    pub fn read_pages(&self) -> Vec<Page> {
        let mut read = Vec::new();
        for (i, chunk) in self.chunks.iter().enumerate() {
            let keep = chunk.pages.iter().filter(|p| i == 0 || p.kind != "headers");
            read.extend(keep.cloned());
        }
        read
    }
}

/// Apply `budget` to a message's pages and pack what is read into chunks.
pub fn plan(pages: &[Page], budget: &Budget) -> Plan {
    let headers: Vec<Page> = pages
        .iter()
        .filter(|p| p.kind == "headers")
        .cloned()
        .collect();
    let header_tokens: usize = headers.iter().map(|p| tokens(&p.text)).sum();
    let content: Vec<&Page> = pages.iter().filter(|p| p.kind != "headers").collect();

    // The budget, in document order: what is past it is not read.
    let (mut used_pages, mut used_tokens) = (0usize, header_tokens);
    let mut read: Vec<Page> = Vec::new();
    let mut unread: Vec<Unread> = Vec::new();
    for page in &content {
        let cost = tokens(&page.text);
        let paged = page.number.is_some() as usize;
        let reason = if used_pages + paged > budget.max_pages {
            Some(format!("budget (max_pages = {})", budget.max_pages))
        } else if used_tokens + cost > budget.max_tokens {
            Some(format!(
                "budget (max_document_tokens = {})",
                budget.max_tokens
            ))
        } else {
            None
        };
        match reason {
            None => {
                used_pages += paged;
                used_tokens += cost;
                read.push((*page).clone());
            }
            Some(reason) => match unread.last_mut() {
                Some(u)
                    if u.part == page.part
                        && u.last.is_some()
                        && page.number == u.last.map(|n| n + 1) =>
                {
                    u.last = page.number;
                }
                _ => unread.push(Unread {
                    part: page.part,
                    file: page.file.clone(),
                    first: page.number,
                    last: page.number,
                    reason,
                }),
            },
        }
    }

    // Chunks: whole pages while they fit beside the headers; a page too long for one chunk
    // alone is cut into pieces on section, then line boundaries.
    let room = budget.chunk_tokens.saturating_sub(header_tokens).max(64);
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut current: Vec<Page> = Vec::new();
    let mut current_tokens = 0;
    let flush = |current: &mut Vec<Page>, chunks: &mut Vec<Chunk>| {
        if !current.is_empty() {
            let mut pages = headers.clone();
            pages.append(current);
            chunks.push(Chunk { pages });
        }
    };
    for page in read {
        let cost = tokens(&page.text);
        let pieces = if cost > room {
            split_text(&page.text, room * 4)
                .into_iter()
                .map(|text| Page {
                    text,
                    ..page.clone()
                })
                .collect()
        } else {
            vec![page]
        };
        for piece in pieces {
            let cost = tokens(&piece.text);
            if current_tokens + cost > room {
                flush(&mut current, &mut chunks);
                current_tokens = 0;
            }
            current_tokens += cost;
            current.push(piece);
        }
    }
    flush(&mut current, &mut chunks);
    if chunks.is_empty() && !headers.is_empty() {
        chunks.push(Chunk { pages: headers });
    }
    Plan {
        chunks,
        unread,
        pages_read: used_pages,
        pages_total: content.iter().filter(|p| p.number.is_some()).count(),
    }
}

/// Cut `text` into pieces of at most `max_chars` characters: at blank lines (sections)
/// where it can, else at line ends, else anywhere on a character boundary.
pub fn split_text(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(1);
    let mut out = Vec::new();
    let mut rest = text.trim();
    while rest.chars().count() > max_chars {
        let limit = rest
            .char_indices()
            .nth(max_chars)
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let head = &rest[..limit];
        let cut = head
            .rfind("\n\n")
            .or_else(|| head.rfind('\n'))
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        out.push(rest[..cut].trim().to_string());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(
        idx: i64,
        kind: &str,
        file: Option<&str>,
        text: &str,
        pages: Option<&[&str]>,
    ) -> PartRow {
        PartRow {
            idx,
            kind: kind.into(),
            filename: file.map(Into::into),
            content_type: "application/pdf".into(),
            size: text.len() as i64,
            supported: true,
            note: None,
            text: Some(text.into()),
            pages: pages.map(|p| serde_json::json!(p)),
        }
    }

    fn budget(max_pages: usize, chunk_tokens: usize) -> Budget {
        Budget {
            max_pages,
            max_tokens: 1_000_000,
            chunk_tokens,
        }
    }

    #[test]
    fn a_message_is_its_headers_bodies_and_every_pdf_page() {
        let parts = [
            part(0, "headers", None, "From: a@b.test\n", None),
            part(1, "text", None, "see attached", None),
            part(
                2,
                "attachment",
                Some("c.pdf"),
                "[page 1]\none\n\n[page 2]\ntwo",
                Some(&["one", "two"]),
            ),
        ];
        let pages = message_pages(&parts);
        assert_eq!(pages.len(), 4);
        assert_eq!((pages[3].part, pages[3].number), (2, Some(2)));
        assert_eq!(pages[3].describe(), "c.pdf p. 2");
        // One chunk renders as the whole message's text did.
        let p = plan(&pages, &budget(100, 10_000));
        assert_eq!(p.chunks.len(), 1);
        assert_eq!(
            p.chunks[0].document(),
            crate::parse::document_text(&parts, usize::MAX)
        );
        assert_eq!(
            p.chunks[0].attachments(),
            "[attachment c.pdf]\n[page 1]\none\n\n[page 2]\ntwo"
        );
    }

    #[test]
    fn chunks_hold_whole_pages_and_every_chunk_the_headers() {
        let texts: Vec<String> = (1..=10).map(|i| format!("page {i} ").repeat(20)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let parts = [
            part(0, "headers", None, "Subject: contract", None),
            part(1, "attachment", Some("c.pdf"), "", Some(&refs)),
        ];
        let p = plan(&message_pages(&parts), &budget(100, 150));
        assert!(p.chunks.len() > 1 && p.unread.is_empty(), "{p:?}");
        let mut seen = Vec::new();
        for c in &p.chunks {
            assert_eq!(c.pages[0].kind, "headers");
            assert!(c.document().starts_with("Subject: contract"));
            seen.extend(c.content().map(|p| p.number.unwrap()));
        }
        assert_eq!(
            seen,
            (1..=10).collect::<Vec<_>>(),
            "each page once, in order"
        );
        // 35 tokens a page, 145 beside the headers: four pages a chunk.
        assert_eq!(p.chunks[1].span(), "pages 5-8 of c.pdf");
    }

    #[test]
    fn pages_past_the_budget_are_listed_as_unread() {
        let texts: Vec<String> = (1..=50).map(|i| format!("page {i}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let parts = [part(1, "attachment", Some("c.pdf"), "", Some(&refs))];
        let p = plan(&message_pages(&parts), &budget(40, 1000));
        assert_eq!((p.pages_read, p.pages_total), (40, 50));
        assert_eq!(p.unread.len(), 1);
        assert_eq!(
            p.unread[0].line(),
            "c.pdf: pages 41-50 not read: budget (max_pages = 40)"
        );
        let by_tokens = plan(
            &message_pages(&parts),
            &Budget {
                max_pages: 100,
                max_tokens: 20,
                chunk_tokens: 1000,
            },
        );
        assert_eq!(by_tokens.pages_read, 10, "{by_tokens:?}");
        assert!(by_tokens.unread[0].reason.contains("max_document_tokens"));
    }

    #[tokio::test]
    async fn calls_run_at_once_up_to_the_cap_and_come_back_in_order() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let calls = (0..MAX_CALLS_IN_FLIGHT + 8)
            .map(|i| {
                let (now, most) = (&now, &most);
                Box::pin(async move {
                    most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    i
                }) as crate::BoxFuture<'_, usize>
            })
            .collect();
        let out = all_in_order(calls).await;
        assert_eq!(out, (0..MAX_CALLS_IN_FLIGHT + 8).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), MAX_CALLS_IN_FLIGHT);
    }

    #[test]
    fn a_long_page_is_cut_at_sections_then_lines() {
        let text = "first section line\n\nsecond section\nline two\nline three";
        assert_eq!(
            split_text(text, 30),
            [
                "first section line",
                "second section\nline two",
                "line three"
            ]
        );
        assert_eq!(split_text("abcdef", 4), ["abcd", "ef"]);
        let parts = [part(1, "text", None, &"word ".repeat(400), None)];
        let p = plan(&message_pages(&parts), &budget(10, 100));
        assert!(p.chunks.len() >= 5, "{}", p.chunks.len());
        assert!(p.unread.is_empty());
    }
}
