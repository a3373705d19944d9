//! Where each attachment and each PDF page starts in a document's text, as
//! [`crate::parse::document_text`] lays it out (`[attachment NAME]` before an attachment's
//! text, `[page N]` before each page of a PDF): so an offset in the text the model read can
//! be named as "invoice.pdf, page 2".

use serde::{Deserialize, Serialize};

/// Where a piece of a document's text stands: in which attachment (None: the mail itself)
/// and on which page of it (None: a document without pages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagePlace {
    pub attachment: Option<String>,
    pub page: Option<u32>,
}

/// The page boundaries of one document text: each place with the byte offset it starts at,
/// in text order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageMap {
    starts: Vec<(usize, PagePlace)>,
}

impl PageMap {
    /// The boundaries of `text`, found from the marker lines `document_text` writes.
    pub fn of(text: &str) -> Self {
        let mut starts = Vec::new();
        let mut attachment: Option<String> = None;
        let mut offset = 0;
        for line in text.split_inclusive('\n') {
            let marker = line.trim_end();
            if let Some(name) = marker
                .strip_prefix("[attachment ")
                .and_then(|m| m.strip_suffix(']'))
                .filter(|n| !n.ends_with(": not readable"))
            {
                attachment = Some(name.to_string());
                starts.push((
                    offset + line.len(),
                    PagePlace {
                        attachment: attachment.clone(),
                        page: None,
                    },
                ));
            } else if let Some(n) = marker
                .strip_prefix("[page ")
                .and_then(|m| m.strip_suffix(']'))
                .and_then(|n| n.parse::<u32>().ok())
            {
                starts.push((
                    offset + line.len(),
                    PagePlace {
                        attachment: attachment.clone(),
                        page: Some(n),
                    },
                ));
            }
            offset += line.len();
        }
        Self { starts }
    }

    /// The place of the text at byte `offset`; None before the first marker (the mail's
    /// own text).
    pub fn at(&self, offset: usize) -> Option<&PagePlace> {
        self.starts
            .iter()
            .take_while(|(start, _)| *start <= offset)
            .last()
            .map(|(_, place)| place)
    }

    /// Every place with the byte offset its text starts at.
    pub fn starts(&self) -> &[(usize, PagePlace)] {
        &self.starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_placed_on_their_attachment_and_page() {
        let text = "Hello\n[attachment a.pdf]\n[page 1]\nfirst\n\n[page 2]\nsecond\n[attachment b.txt]\nplain";
        let map = PageMap::of(text);
        assert_eq!(map.at(text.find("Hello").unwrap()), None);
        let place = |s: &str| map.at(text.find(s).unwrap()).cloned().unwrap();
        assert_eq!(
            place("first"),
            PagePlace {
                attachment: Some("a.pdf".into()),
                page: Some(1)
            }
        );
        assert_eq!(place("second").page, Some(2));
        assert_eq!(
            place("plain"),
            PagePlace {
                attachment: Some("b.txt".into()),
                page: None
            }
        );
    }
}
