//! Pages into passages: cut on page and paragraph boundaries (a Markdown heading starts a
//! passage and stays with what follows it), packed up to a size the embedding model reads
//! whole, each passage after the first on a page beginning with the last sentence of the
//! one before it (the overlap), so a fact that straddles a cut is whole in one of them.

/// How passages are cut.
#[derive(Debug, Clone, Copy)]
pub struct ChunkOptions {
    /// Passages are packed up to this many characters (all-MiniLM-L6 reads 256 tokens,
    /// about 1,000 characters of English).
    pub max_chars: usize,
    /// At most this much of the previous passage is repeated at the start of the next.
    pub overlap_chars: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        Self {
            max_chars: 800,
            overlap_chars: 200,
        }
    }
}

/// A passage and the page (from 1) it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub page: i64,
    pub text: String,
}

/// Cut every page into passages, in order.
pub fn chunk_pages(pages: &[String], options: ChunkOptions) -> Vec<Chunk> {
    let mut out = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        for text in chunk_page(page, options) {
            out.push(Chunk {
                page: i as i64 + 1,
                text,
            });
        }
    }
    out
}

fn chunk_page(page: &str, options: ChunkOptions) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    // Whether `current` holds more than the overlap carried over from the passage before.
    let mut fresh = false;
    for block in blocks(page, options.max_chars) {
        let heading = block.starts_with('#');
        let fits = current.len() + block.len() + 2 <= options.max_chars;
        if fresh && (!fits || (heading && !ends_with_heading(&current))) {
            let carry = if heading {
                String::new()
            } else {
                overlap(&current, options.overlap_chars)
            };
            out.push(std::mem::take(&mut current));
            current = carry;
            if current.len() + block.len() + 2 > options.max_chars {
                current.clear();
            }
        }
        if !current.is_empty() {
            current.push_str("\n\n");
        }
        current.push_str(&block);
        fresh = true;
    }
    if fresh {
        out.push(current);
    }
    out
}

fn ends_with_heading(text: &str) -> bool {
    text.rsplit("\n\n")
        .next()
        .is_some_and(|b| b.starts_with('#'))
}

/// Paragraphs (blank-line separated, white space inside collapsed), each cut to
/// `max_chars` at sentence, then word, boundaries.
fn blocks(page: &str, max_chars: usize) -> Vec<String> {
    let mut out = Vec::new();
    let normalized = page.replace("\r\n", "\n");
    for para in normalized.split("\n\n") {
        let lines: Vec<&str> = para
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            continue;
        }
        // A heading line is a block of its own.
        let mut rest: Vec<&str> = Vec::new();
        for line in lines {
            if line.starts_with('#') {
                if !rest.is_empty() {
                    split_long(&rest.join(" "), max_chars, &mut out);
                    rest.clear();
                }
                out.push(line.to_string());
            } else {
                rest.push(line);
            }
        }
        if !rest.is_empty() {
            split_long(&rest.join(" "), max_chars, &mut out);
        }
    }
    out
}

fn split_long(text: &str, max_chars: usize, out: &mut Vec<String>) {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.len() <= max_chars {
        out.push(text);
        return;
    }
    let mut current = String::new();
    for piece in sentences(&text).flat_map(|s| {
        if s.len() <= max_chars {
            vec![s.to_string()]
        } else {
            words_within(s, max_chars)
        }
    }) {
        if !current.is_empty() && current.len() + 1 + piece.len() > max_chars {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&piece);
    }
    if !current.is_empty() {
        out.push(current);
    }
}

/// Sentences: cut after `.`, `!` or `?` followed by a space.
fn sentences(text: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut cuts = Vec::new();
    for i in 0..bytes.len().saturating_sub(1) {
        if matches!(bytes[i], b'.' | b'!' | b'?') && bytes[i + 1] == b' ' {
            cuts.push(i + 1);
        }
    }
    cuts.push(text.len());
    cuts.into_iter().filter_map(move |end| {
        let s = text[start..end].trim();
        start = end;
        (!s.is_empty()).then_some(s)
    })
}

fn words_within(text: &str, max_chars: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for word in text.split(' ') {
        if !current.is_empty() && current.len() + 1 + word.len() > max_chars {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        // A single word longer than a passage is cut on a character boundary.
        let mut word = word;
        while word.len() > max_chars {
            let mut at = max_chars;
            while !word.is_char_boundary(at) {
                at -= 1;
            }
            out.push(word[..at].to_string());
            word = &word[at..];
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The last sentence (or sentences) of `text` that fit in `max_chars`.
fn overlap(text: &str, max_chars: usize) -> String {
    let last_block = text.rsplit("\n\n").next().unwrap_or(text);
    let sents: Vec<&str> = sentences(last_block).collect();
    let mut taken: Vec<&str> = Vec::new();
    let mut len = 0;
    for s in sents.iter().rev() {
        if len + s.len() + 1 > max_chars {
            break;
        }
        len += s.len() + 1;
        taken.push(s);
    }
    taken.reverse();
    taken.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max: usize, overlap: usize) -> ChunkOptions {
        ChunkOptions {
            max_chars: max,
            overlap_chars: overlap,
        }
    }

    #[test]
    fn short_paragraphs_pack_into_one_passage_per_page() {
        let pages = vec![
            "First para.\n\nSecond para.".to_string(),
            "Page two.".into(),
        ];
        let c = chunk_pages(&pages, ChunkOptions::default());
        assert_eq!(
            c,
            [
                Chunk {
                    page: 1,
                    text: "First para.\n\nSecond para.".into()
                },
                Chunk {
                    page: 2,
                    text: "Page two.".into()
                }
            ]
        );
    }

    #[test]
    fn long_pages_cut_on_paragraphs_with_the_last_sentence_repeated() {
        let page = "Alpha one. Alpha two.\n\nBravo one. Bravo two.\n\nCharlie one.".to_string();
        let c = chunk_pages(&[page], opts(30, 12));
        let texts: Vec<&str> = c.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Alpha one. Alpha two.",
                "Bravo one. Bravo two.",
                "Bravo two.\n\nCharlie one."
            ]
        );
        assert!(c.iter().all(|c| c.text.len() <= 30));
    }

    #[test]
    fn a_heading_starts_a_passage_and_keeps_its_section() {
        let page =
            "Intro text here.\n\n## Termination\nEither party may end it.\n\n## Fees\nTen euros."
                .to_string();
        let c = chunk_pages(&[page], opts(60, 20));
        let texts: Vec<&str> = c.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Intro text here.",
                "## Termination\n\nEither party may end it.",
                "## Fees\n\nTen euros."
            ]
        );
    }

    #[test]
    fn a_paragraph_longer_than_a_passage_is_cut_at_sentences_and_words() {
        let long = "word ".repeat(100);
        let page = format!("Short one. {long}");
        let c = chunk_pages(&[page], opts(50, 0));
        assert!(c.len() > 5);
        assert!(c.iter().all(|c| c.text.len() <= 50), "{c:?}");
        let words: usize = c.iter().map(|c| c.text.matches("word").count()).sum();
        assert_eq!(words, 100, "nothing lost");
    }
}
