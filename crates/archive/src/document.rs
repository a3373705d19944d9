//! Files into page texts: PDF (intake's text layer, per page), `.eml` (intake's MIME
//! parsing: the message is page 1, each attachment's pages follow), plain text and
//! Markdown (pages split on form feeds, as `pdftotext` writes them).

use std::path::Path;

use anyhow::{Context, Result, bail};

/// The kinds of file the archive reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    Pdf,
    Eml,
    Text,
    Markdown,
}

impl DocumentKind {
    /// By file extension; None for a kind the archive does not read.
    pub fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "pdf" => Self::Pdf,
            "eml" => Self::Eml,
            "txt" | "text" => Self::Text,
            "md" | "markdown" => Self::Markdown,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pdf => "pdf",
            Self::Eml => "eml",
            Self::Text => "text",
            Self::Markdown => "markdown",
        }
    }
}

/// A document read from a file: its name (the file name, what answers cite) and its pages.
#[derive(Debug, Clone)]
pub struct SourceDocument {
    pub name: String,
    pub kind: DocumentKind,
    /// Page texts; page N is `pages[N - 1]`.
    pub pages: Vec<String>,
}

/// Read one file by its extension.
pub fn read(path: &Path) -> Result<(SourceDocument, Vec<u8>)> {
    let Some(kind) = DocumentKind::of(path) else {
        bail!(
            "{}: not a kind the archive reads (.pdf, .eml, .txt, .md)",
            path.display()
        );
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let doc = from_bytes(&name, kind, &bytes).with_context(|| path.display().to_string())?;
    Ok((doc, bytes))
}

/// Read a document of a known kind from its bytes.
pub fn from_bytes(name: &str, kind: DocumentKind, bytes: &[u8]) -> Result<SourceDocument> {
    let pages = match kind {
        DocumentKind::Pdf => verre_intake::parse::pdf_pages(bytes)
            .map_err(|e| anyhow::anyhow!("reading the PDF: {e}"))?,
        DocumentKind::Eml => mail_pages(bytes)?,
        DocumentKind::Text | DocumentKind::Markdown => {
            let text = String::from_utf8_lossy(bytes);
            text.split('\u{c}').map(str::to_string).collect()
        }
    };
    if pages.iter().all(|p| p.trim().is_empty()) {
        bail!("no text in this {} (a scan needs OCR first)", kind.as_str());
    }
    Ok(SourceDocument {
        name: name.to_string(),
        kind,
        pages,
    })
}

/// The message (headers and bodies) as page 1, then each attachment's pages.
fn mail_pages(raw: &[u8]) -> Result<Vec<String>> {
    let mail = verre_intake::parse::parse_mail(raw).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut message = String::new();
    let mut attachments = Vec::new();
    for part in &mail.parts {
        match (&part.pages, &part.text) {
            (Some(pages), _) => {
                let name = part.filename.as_deref().unwrap_or("attachment");
                for (i, p) in pages.iter().enumerate() {
                    attachments.push(format!("{name}, page {}\n\n{}", i + 1, p.trim()));
                }
            }
            (None, Some(text)) if part.kind == "attachment" => {
                let name = part.filename.as_deref().unwrap_or("attachment");
                attachments.push(format!("{name}\n\n{}", text.trim()));
            }
            (None, Some(text)) => {
                message.push_str(text.trim());
                message.push_str("\n\n");
            }
            (None, None) => {}
        }
    }
    let mut pages = vec![message.trim_end().to_string()];
    pages.extend(attachments);
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_pages_split_on_form_feeds() {
        let d = from_bytes("a.txt", DocumentKind::Text, b"one\x0ctwo\x0cthree").unwrap();
        assert_eq!(d.pages, ["one", "two", "three"]);
    }

    #[test]
    fn a_document_without_text_is_refused() {
        let e = from_bytes("a.md", DocumentKind::Markdown, b"  \n\x0c ").unwrap_err();
        assert!(e.to_string().contains("no text"), "{e}");
    }

    #[test]
    fn a_mail_is_page_one_and_its_attachments_follow() {
        let raw = b"From: Ann Lee <ann@example.com>\r\nTo: ops@example.com\r\nSubject: Lease\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain\r\n\r\nPlease find the lease attached.\r\n--b\r\n\
Content-Type: text/plain\r\nContent-Disposition: attachment; filename=lease.txt\r\n\r\n\
The rent is 900 EUR.\r\n--b--\r\n";
        let d = from_bytes("m.eml", DocumentKind::Eml, raw).unwrap();
        assert_eq!(d.pages.len(), 2, "{:?}", d.pages);
        assert!(d.pages[0].contains("Please find the lease attached"));
        assert!(d.pages[0].contains("Subject: Lease"), "{:?}", d.pages[0]);
        assert!(d.pages[1].starts_with("lease.txt") && d.pages[1].contains("900 EUR"));
    }

    #[test]
    fn kinds_by_extension() {
        assert_eq!(
            DocumentKind::of(Path::new("a/B.PDF")),
            Some(DocumentKind::Pdf)
        );
        assert_eq!(
            DocumentKind::of(Path::new("notes.md")),
            Some(DocumentKind::Markdown)
        );
        assert_eq!(DocumentKind::of(Path::new("x.docx")), None);
    }
}
