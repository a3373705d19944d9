//! Summaries of long documents that keep every section: the document's section headings
//! are found in its text ([`sections`]: numbered or titled heading lines, Markdown
//! headings), the pages are cut into chunks at section starts where they can be, and each
//! chunk is read by one model call — every chunk's call at once, so the engine batches them
//! — that answers under a JSON schema with, for each section the chunk covers, what the
//! section is about (`topic`) and a few points with the page each is on. The reduce is ours,
//! not the model's: one line per section with its heading, its pages, its topic and as many
//! points as the length asked for allows, each cited `[p. N]` to a page of the section that
//! the model read (a cited page outside the chunk is dropped). When the length is too short
//! for a line per section, consecutive sections share a line and the summary says which.
//! `verre summarize` and the pipeline's `summarize` stage both run [`summarize`].

use serde::Serialize;
use serde_json::{Value, json};

use crate::backend::{BoxFuture, ExtractError, ExtractRequest, ModelApi, ModelCallError, extract};
use crate::document::{Budget, Chunk, Page, all_in_order, plan, tokens};

/// What to summarise with, and how long.
#[derive(Debug, Clone)]
pub struct SummaryOptions {
    pub model: String,
    /// About how many words the summary has (the section headings are kept even when
    /// they alone are longer).
    pub words: usize,
    /// Tokens of text one call reads (a chunk of pages).
    pub chunk_tokens: usize,
}

/// A summary and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub text: String,
    /// The document's sections as summarised, in order.
    pub sections: Vec<SectionSummary>,
    /// Lines that recur on many pages across sections (standard clauses, running heads),
    /// each with the first page it is on: read once, here, not in every section.
    pub recurring: Vec<Point>,
    /// Chunks read (one model call each).
    pub chunks: usize,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// One section of the document: its heading, pages, and what the model said of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionSummary {
    /// The heading line as the document writes it; None for the text before the first
    /// heading, or a document without headings (then a section is a chunk).
    pub heading: Option<String>,
    /// First and last page (None for text without pages).
    pub first_page: Option<u32>,
    pub last_page: Option<u32>,
    /// What the section is about, in the model's words (its first chunk's answer).
    pub topic: String,
    /// Points from every chunk of the section, each with the page it cites.
    pub points: Vec<Point>,
}

/// A point the model read on one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Point {
    pub text: String,
    pub page: Option<u32>,
}

/// A section heading found in the text: its line and its level (lower is higher up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heading {
    pub text: String,
    pub level: u8,
}

const MAP_SYSTEM: &str = "You summarise documents faithfully, section by section. You state only what the text says. A section's topic is its subject as its heading and its own lines name it, not the standard clauses that many sections repeat.";

/// Words a summary line needs at least (heading, pages and a few words of topic); below
/// this per section, consecutive sections share a line.
const MIN_LINE_WORDS: usize = 12;

/// Summarise `pages` (all of them: the caller chooses what to read) in about
/// `options.words` words. `progress(done, total)` is called as calls complete.
pub async fn summarize(
    api: &dyn ModelApi,
    pages: &[Page],
    options: &SummaryOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Summary, ModelCallError> {
    let headings = headings(pages);
    let recurring = recurring_lines(pages, &headings);
    let read = without_lines(pages, &recurring);
    let chunks = section_chunks(&read, &headings, options.chunk_tokens);
    let layout = sections(&chunks, &headings);
    let n = chunks.len();
    if n == 0 {
        return Ok(Summary {
            text: String::new(),
            sections: Vec::new(),
            recurring,
            chunks: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
        });
    }
    let line_words = (options.words / layout.sections.len().max(1)).max(MIN_LINE_WORDS);
    // Points a section line has room for, after its heading and topic (about 12 words a
    // point); the model is asked for no more.
    let points_wanted = (line_words.saturating_sub(16) / 12).clamp(1, 4);

    let done = std::sync::atomic::AtomicUsize::new(0);
    progress(0, n);
    let requests: Vec<(String, Value, usize)> = chunks
        .iter()
        .zip(&layout.chunk_sections)
        .map(|(chunk, covered)| {
            let listed: Vec<&SectionSpan> = covered.iter().map(|&s| &layout.sections[s]).collect();
            let paged = chunk.content().any(|p| p.number.is_some());
            (
                map_prompt(chunk, &listed, points_wanted),
                map_schema(&listed, points_wanted, paged),
                listed.len() * (60 + points_wanted * 60),
            )
        })
        .collect();
    let calls = requests
        .iter()
        .map(|(prompt, schema, max_tokens)| {
            Box::pin(async {
                let answer = extract(
                    api,
                    &ExtractRequest {
                        model: &options.model,
                        system: MAP_SYSTEM,
                        prompt,
                        schema,
                        max_tokens: *max_tokens,
                        retries: 1,
                        repetition_penalty: 1.0,
                    },
                )
                .await;
                let d = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                progress(d, n);
                answer
            }) as BoxFuture<'_, Result<crate::backend::Extraction, ExtractError>>
        })
        .collect();

    let mut sections: Vec<SectionSummary> = layout
        .sections
        .iter()
        .map(|s| SectionSummary {
            heading: s.heading.clone(),
            first_page: s.first_page,
            last_page: s.last_page,
            topic: String::new(),
            points: Vec::new(),
        })
        .collect();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for ((chunk, covered), answer) in chunks
        .iter()
        .zip(&layout.chunk_sections)
        .zip(all_in_order(calls).await)
    {
        let answer = answer.map_err(|e| match e {
            ExtractError::Call(e) => e,
            ExtractError::Invalid(e) => {
                ModelCallError::transient(format!("summarising {}: {e}", chunk.span()))
            }
        })?;
        prompt_tokens += answer.prompt_tokens;
        completion_tokens += answer.completion_tokens;
        let on_pages: Vec<u32> = chunk.content().filter_map(|p| p.number).collect();
        for (k, &s) in covered.iter().enumerate() {
            let entry = &answer.value[format!("section_{}", k + 1)];
            let section = &mut sections[s];
            let topic = clean(entry["topic"].as_str().unwrap_or(""));
            if section.topic.is_empty() {
                section.topic = topic;
            }
            for point in entry["points"].as_array().into_iter().flatten() {
                let text = clean(point["text"].as_str().unwrap_or(""));
                let page = point["page"].as_u64().map(|p| p as u32);
                // A citation must name a page the model read, of this section.
                let cited_right = page.is_some_and(|p| {
                    on_pages.contains(&p)
                        && section.first_page.is_none_or(|f| p >= f)
                        && section.last_page.is_none_or(|l| p <= l)
                });
                if text.is_empty() || (!on_pages.is_empty() && !cited_right) {
                    continue;
                }
                let seen = section
                    .points
                    .iter()
                    .any(|q| q.text.eq_ignore_ascii_case(&text));
                if !seen {
                    section.points.push(Point { text, page });
                }
            }
        }
    }
    let text = write_summary(&sections, &recurring, options.words);
    Ok(Summary {
        text,
        sections,
        recurring,
        chunks: n,
        prompt_tokens,
        completion_tokens,
    })
}

/// Summarise `pages` in one call, the whole text in one prompt (a document that fits the
/// model's context; `verre summarize --single-pass`, to compare with the chunked read).
pub async fn summarize_single_pass(
    api: &dyn ModelApi,
    pages: &[Page],
    options: &SummaryOptions,
) -> Result<Summary, ModelCallError> {
    let whole = SummaryOptions {
        chunk_tokens: usize::MAX / 8,
        ..options.clone()
    };
    summarize(api, pages, &whole, &|_, _| {}).await
}

/// A section as laid out over the chunks, before the model reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SectionSpan {
    heading: Option<String>,
    first_page: Option<u32>,
    last_page: Option<u32>,
}

impl SectionSpan {
    /// `"Chapter 3: Glaciers" (pages 41-60)` for the prompt.
    fn describe(&self) -> String {
        let name = match &self.heading {
            Some(h) => format!("the section headed \"{h}\""),
            None => "the text before the first heading".to_string(),
        };
        match pages_label(self.first_page, self.last_page) {
            Some(p) => format!("{name} ({p})"),
            None => name,
        }
    }
}

struct Layout {
    sections: Vec<SectionSpan>,
    /// For each chunk, the sections it covers (indices into `sections`), in order.
    chunk_sections: Vec<Vec<usize>>,
}

/// The sections of a document read in `chunks`: a new one at each of `headings` (found
/// by [`headings`]), in reading order. Without headings, each chunk is a section.
fn sections(chunks: &[Chunk], headings: &[Heading]) -> Layout {
    let mut sections: Vec<SectionSpan> = Vec::new();
    let mut chunk_sections = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let mut covered: Vec<usize> = Vec::new();
        if headings.is_empty() {
            let numbered: Vec<u32> = chunk.content().filter_map(|p| p.number).collect();
            sections.push(SectionSpan {
                heading: None,
                first_page: numbered.first().copied(),
                last_page: numbered.last().copied(),
            });
            chunk_sections.push(vec![sections.len() - 1]);
            continue;
        }
        for page in chunk.content() {
            for line in page.text.lines() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let heading = headings.iter().find(|h| h.text == line);
                if heading.is_some() || sections.is_empty() {
                    sections.push(SectionSpan {
                        heading: heading.map(|h| h.text.clone()),
                        first_page: page.number,
                        last_page: page.number,
                    });
                    covered.push(sections.len() - 1);
                    continue;
                }
                // Other heading-like lines (running heads, subheadings) alone do not
                // carry a section onto a page.
                if heading_level(line).is_some() {
                    continue;
                }
                let current = sections.len() - 1;
                if covered.last() != Some(&current) {
                    covered.push(current);
                }
                if page.number.is_some() {
                    sections[current].last_page = page.number;
                }
            }
        }
        if covered.is_empty() {
            // Nothing but blank lines: the chunk continues the section before it.
            if sections.is_empty() {
                sections.push(SectionSpan {
                    heading: None,
                    first_page: chunk.content().find_map(|p| p.number),
                    last_page: chunk.content().find_map(|p| p.number),
                });
            }
            covered.push(sections.len() - 1);
        }
        chunk_sections.push(covered);
    }
    Layout {
        sections,
        chunk_sections,
    }
}

/// The document's section headings: the lines that read as headings (see
/// [`heading_level`]) at the highest level that occurs at least twice (a document's one
/// title is not a section), leaving out running heads (a line on more than two pages).
pub fn headings(pages: &[Page]) -> Vec<Heading> {
    let mut found: Vec<Heading> = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for page in pages.iter().filter(|p| p.kind != "headers") {
        for line in page.text.lines() {
            let line = line.trim();
            if let Some(level) = heading_level(line) {
                *seen.entry(line.to_string()).or_default() += 1;
                found.push(Heading {
                    text: line.to_string(),
                    level,
                });
            }
        }
    }
    found.retain(|h| seen[&h.text] <= 2);
    let count = |level: u8| found.iter().filter(|h| h.level == level).count();
    let mut levels: Vec<u8> = found.iter().map(|h| h.level).collect();
    levels.sort_unstable();
    levels.dedup();
    let Some(level) = levels
        .iter()
        .copied()
        .find(|&l| count(l) >= 2)
        .or(levels.first().copied())
    else {
        return Vec::new();
    };
    found.retain(|h| h.level == level);
    found.dedup_by(|a, b| a.text == b.text);
    found
}

/// How high up `line` is as a heading, or None when it reads as text: Markdown `#`
/// headings (0-5), `Part`/`Chapter`/`Annex` (10-11) and `Section`/`Article`/`Clause` (12)
/// followed by a number, numbered titles `2.` `2.1` `IV.` (20 + depth), short lines in
/// capitals (30). A heading is short, and not a sentence.
pub fn heading_level(line: &str) -> Option<u8> {
    let line = line.trim();
    if line.is_empty() || line.chars().count() > 90 {
        return None;
    }
    if line.starts_with('#') {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        let title = &line[hashes..];
        return (hashes <= 6 && title.starts_with(' ') && !title.trim().is_empty())
            .then_some(hashes as u8 - 1);
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() > 12 || line.ends_with([',', ';']) {
        return None;
    }
    let starts_upper = |s: &[&str]| {
        s.first()
            .and_then(|w| w.chars().next())
            .is_none_or(|c| c.is_uppercase() || c.is_numeric())
    };
    let keyword = match words[0].to_lowercase().as_str() {
        "part" | "book" => Some(10),
        "chapter" | "annex" | "appendix" | "schedule" | "exhibit" => Some(11),
        "section" | "article" | "clause" => Some(12),
        _ => None,
    };
    if let (Some(level), Some(number)) = (keyword, words.get(1)) {
        let bare = number.trim_end_matches(['.', ':', ')', '-']);
        let marked = bare.len() < number.len() || words.get(2).is_some_and(|w| is_dash(w));
        let rest = if words.get(2).is_some_and(|w| is_dash(w)) {
            &words[3..]
        } else {
            &words[2..]
        };
        if is_ordinal(bare) && (marked || rest.is_empty() || starts_upper(rest)) {
            return (!line.ends_with('.') || rest.len() <= 6).then_some(level);
        }
        return None;
    }
    let number = words[0];
    let bare = number.trim_end_matches(['.', ')']);
    let dotted = !bare.is_empty()
        && bare
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    let lettered = bare.len() < number.len() && is_ordinal(bare);
    if (dotted || lettered)
        && words.len() >= 2
        && words.len() <= 10
        && starts_upper(&words[1..])
        && !line.ends_with('.')
    {
        return Some(20 + bare.split('.').count().min(9) as u8);
    }
    let letters: Vec<char> = line.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.len() >= 4
        && letters.iter().all(|c| c.is_uppercase())
        && words.len() <= 8
        && !line.ends_with('.')
    {
        return Some(30);
    }
    None
}

fn is_dash(word: &str) -> bool {
    matches!(word, "-" | "–" | "—" | ":")
}

/// `12`, `IV`, `b`: a section number.
fn is_ordinal(s: &str) -> bool {
    !s.is_empty()
        && (s.chars().all(|c| c.is_ascii_digit())
            || s.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            || s.chars()
                .all(|c| matches!(c.to_ascii_uppercase(), 'I' | 'V' | 'X' | 'L' | 'C'))
            || (s.len() == 1 && s.chars().all(|c| c.is_ascii_alphabetic())))
}

/// Lines on three pages or more, in two sections or more (any, without headings): the
/// clauses and running heads a document repeats, which say nothing of one section and
/// would fill its share of the summary. In order of first appearance, with that page.
pub fn recurring_lines(pages: &[Page], headings: &[Heading]) -> Vec<Point> {
    use std::collections::{BTreeSet, HashMap};
    struct Seen {
        pages: usize,
        sections: BTreeSet<usize>,
        order: usize,
        first_page: Option<u32>,
    }
    let mut seen: HashMap<&str, Seen> = HashMap::new();
    let mut section = 0;
    let mut order = 0;
    for (i, page) in pages
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind != "headers")
    {
        let mut on_page = BTreeSet::new();
        for line in page.text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if headings.iter().any(|h| h.text == line) {
                section += 1;
                continue;
            }
            let entry = seen.entry(line).or_insert_with(|| Seen {
                pages: 0,
                sections: BTreeSet::new(),
                order,
                first_page: page.number,
            });
            order += 1;
            if on_page.insert(line) {
                entry.pages += 1;
            }
            entry
                .sections
                .insert(if headings.is_empty() { i } else { section });
        }
    }
    let mut lines: Vec<(usize, Point)> = seen
        .into_iter()
        .filter(|(_, seen)| seen.pages >= 3 && seen.sections.len() >= 2)
        .map(|(text, seen)| {
            (
                seen.order,
                Point {
                    text: text.to_string(),
                    page: seen.first_page,
                },
            )
        })
        .collect();
    lines.sort_by_key(|(first, _)| *first);
    lines.into_iter().map(|(_, p)| p).collect()
}

/// `pages` without the `lines` (whole lines, as [`recurring_lines`] found them).
fn without_lines(pages: &[Page], lines: &[Point]) -> Vec<Page> {
    let drop: std::collections::HashSet<&str> = lines.iter().map(|p| p.text.as_str()).collect();
    pages
        .iter()
        .map(|p| Page {
            text: p
                .text
                .lines()
                .filter(|l| !drop.contains(l.trim()))
                .collect::<Vec<_>>()
                .join("\n"),
            ..p.clone()
        })
        .collect()
}

/// The pages cut into chunks of at most `chunk_tokens`, a new chunk at a section's start
/// once the current one is half full (so a chunk holds whole short sections, and a long
/// section's chunks are its own).
fn section_chunks(pages: &[Page], headings: &[Heading], chunk_tokens: usize) -> Vec<Chunk> {
    let headers: Vec<Page> = pages
        .iter()
        .filter(|p| p.kind == "headers")
        .cloned()
        .collect();
    let budget = Budget {
        max_pages: usize::MAX,
        max_tokens: usize::MAX,
        chunk_tokens,
    };
    let opens_section = |p: &Page| {
        p.text
            .lines()
            .any(|l| headings.iter().any(|h| h.text == l.trim()))
    };
    let mut chunks = Vec::new();
    let mut run: Vec<Page> = Vec::new();
    let mut run_tokens = 0usize;
    let mut flush = |run: &mut Vec<Page>| {
        if !run.is_empty() {
            let mut pages = headers.clone();
            pages.append(run);
            chunks.extend(plan(&pages, &budget).chunks);
        }
    };
    for page in pages.iter().filter(|p| p.kind != "headers") {
        let cost = tokens(&page.text);
        if opens_section(page) && run_tokens * 2 >= chunk_tokens {
            flush(&mut run);
            run_tokens = 0;
        }
        run_tokens = run_tokens.saturating_add(cost);
        run.push(page.clone());
    }
    flush(&mut run);
    chunks
}

fn map_prompt(chunk: &Chunk, sections: &[&SectionSpan], points: usize) -> String {
    let listed: Vec<String> = sections
        .iter()
        .enumerate()
        .map(|(k, s)| format!("- section_{}: {}", k + 1, s.describe()))
        .collect();
    let cite = if chunk.content().any(|p| p.number.is_some()) {
        ", each with the number of the page it is on (the [page N] marker above it)"
    } else {
        ""
    };
    format!(
        "{}\n\nThe text above is {} of a longer document. It holds these sections:\n{}\n\nFor each section: `topic`, one sentence in your own words on what the section's own lines say (not its heading repeated); then `points`, at most {points} facts from this section's lines, each a whole sentence as the text states it{cite}.",
        chunk.document(),
        chunk.span(),
        listed.join("\n"),
    )
}

/// The map answer's schema: one object per section the chunk covers.
fn map_schema(sections: &[&SectionSpan], points: usize, paged: bool) -> Value {
    let point = if paged {
        json!({
            "type": "object",
            "properties": {
                "text": {"type": "string", "maxLength": 200},
                "page": {"type": "integer"},
            },
            "required": ["text", "page"],
        })
    } else {
        json!({
            "type": "object",
            "properties": {"text": {"type": "string", "maxLength": 200}},
            "required": ["text"],
        })
    };
    let mut properties = serde_json::Map::new();
    for (k, s) in sections.iter().enumerate() {
        properties.insert(
            format!("section_{}", k + 1),
            json!({
                "type": "object",
                "description": s.describe(),
                "properties": {
                    "topic": {"type": "string", "maxLength": 120},
                    "points": {"type": "array", "items": point, "maxItems": points},
                },
                "required": ["topic", "points"],
            }),
        );
    }
    let required: Vec<String> = properties.keys().cloned().collect();
    json!({"type": "object", "properties": properties, "required": required})
}

/// The summary's text: one line per section (or per run of sections, when `words` is too
/// few for a line each), its heading, pages, topic and the points that fit, cited.
fn write_summary(sections: &[SectionSummary], recurring: &[Point], words: usize) -> String {
    let n = sections.len();
    if n == 0 {
        return String::new();
    }
    let per_line = if words / n >= MIN_LINE_WORDS {
        1
    } else {
        (n * MIN_LINE_WORDS).div_ceil(words.max(1))
    };
    let groups: Vec<&[SectionSummary]> = sections.chunks(per_line).collect();
    let note = (per_line > 1).then(|| {
        let runs: Vec<String> = (0..n)
            .step_by(per_line)
            .map(|a| {
                let b = (a + per_line).min(n);
                if b - a == 1 {
                    format!("{}", a + 1)
                } else {
                    format!("{}-{b}", a + 1)
                }
            })
            .collect();
        format!(
            "(To fit {words} words, sections share lines: {}.)",
            runs.join(", ")
        )
    });
    let note_words = note.as_deref().map_or(0, count_words);
    let shares = groups.len() + usize::from(!recurring.is_empty());
    let line_budget = words.saturating_sub(note_words) / shares;
    let mut lines: Vec<String> = groups.iter().map(|g| write_line(g, line_budget)).collect();
    // What recurs, once, as many of its lines as fit the last share.
    let mut left = words
        .saturating_sub(note_words)
        .saturating_sub(lines.iter().map(|l| count_words(l)).sum());
    let mut line = format!("Recurring on many pages ({} lines):", recurring.len());
    if !recurring.is_empty() && count_words(&line) < left {
        left -= count_words(&line);
        for r in recurring {
            let more = cited(&r.text, r.page);
            if count_words(&more) > left {
                break;
            }
            left -= count_words(&more);
            line.push_str(&more);
        }
        lines.push(line);
    }
    lines.extend(note);
    lines.join("\n")
}

/// One line for `group`: `Heading (pp. 41-60): topic [p. 41]. Point [p. 44].`, within
/// `words` (the headings and pages are kept whatever the budget).
fn write_line(group: &[SectionSummary], words: usize) -> String {
    let headings: Vec<&str> = group.iter().filter_map(|s| s.heading.as_deref()).collect();
    let first = group.iter().find_map(|s| s.first_page);
    let last = group.iter().rev().find_map(|s| s.last_page);
    let pages = pages_label(first, last);
    let mut line = match (headings.is_empty(), pages) {
        (true, Some(pages)) => pages[..1].to_uppercase() + &pages[1..],
        (true, None) => "Text".to_string(),
        (false, Some(pages)) => format!(
            "{} ({})",
            headings.join("; "),
            pages.replace("pages", "pp.").replace("page", "p.")
        ),
        (false, None) => headings.join("; "),
    };
    line.push(':');
    let mut left = words.saturating_sub(count_words(&line));
    for s in group {
        // A topic that only repeats the heading adds nothing to the line.
        let heading = s.heading.as_deref().unwrap_or("").to_lowercase();
        if s.topic.is_empty() || heading.contains(&s.topic.to_lowercase()) {
            continue;
        }
        let mut topic = cited(&s.topic, s.first_page);
        if count_words(&topic) > left {
            // The topic shortened to what is left, still cited; the heading alone when
            // too little is left.
            if left < 5 {
                continue;
            }
            let short: Vec<&str> = s.topic.split_whitespace().take(left - 2).collect();
            topic = cited(&short.join(" "), s.first_page);
        }
        left = left.saturating_sub(count_words(&topic));
        line.push_str(&topic);
    }
    // Points in turn from each section of the line, while they fit.
    let most = group.iter().map(|s| s.points.len()).max().unwrap_or(0);
    'points: for i in 0..most {
        for s in group {
            let Some(p) = s.points.get(i) else { continue };
            let point = cited(&p.text, p.page);
            if count_words(&point) > left {
                break 'points;
            }
            left -= count_words(&point);
            line.push_str(&point);
        }
    }
    line
}

/// ` Text [p. 4].`: a sentence of a summary line with its citation.
fn cited(text: &str, page: Option<u32>) -> String {
    match page {
        Some(p) => format!(" {} [p. {p}].", text.trim_end_matches('.')),
        None => format!(" {}.", text.trim_end_matches('.')),
    }
}

/// "pages 41-60", "page 7", or None for text without pages.
fn pages_label(first: Option<u32>, last: Option<u32>) -> Option<String> {
    match (first, last) {
        (Some(a), Some(b)) if a == b => Some(format!("page {a}")),
        (Some(a), Some(b)) => Some(format!("pages {a}-{b}")),
        (Some(a), None) | (None, Some(a)) => Some(format!("page {a}")),
        (None, None) => None,
    }
}

fn count_words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// A model's phrase on one line, without the citations it may have copied.
fn clean(text: &str) -> String {
    let mut out = text.split_whitespace().collect::<Vec<_>>().join(" ");
    while let Some(at) = out.find("[p") {
        let Some(end) = out[at..].find(']') else {
            break;
        };
        out.replace_range(at..at + end + 1, "");
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(number: u32, text: &str) -> Page {
        Page {
            part: 1,
            kind: "attachment".into(),
            file: Some("report.pdf".into()),
            number: Some(number),
            text: text.into(),
        }
    }

    #[test]
    fn heading_lines_are_told_from_sentences() {
        for heading in [
            "Chapter 3: Glaciers",
            "CHAPTER IV - The Harbour",
            "Section 2. Payment",
            "Article 12 Termination",
            "2. Scope of the services",
            "4.1 Fees",
            "IV. Findings",
            "## Results",
            "WITNESS STATEMENT",
        ] {
            assert!(heading_level(heading).is_some(), "{heading}");
        }
        for text in [
            "Section 3 of this Agreement applies to all orders.",
            "Finding 1.2 of this chapter concerns beekeeping.",
            "The parties shall cooperate in good faith.",
            "2 weeks after delivery, the supplier invoices.",
            "#hashtag",
            "A.",
            "",
        ] {
            assert_eq!(heading_level(text), None, "{text}");
        }
        assert!(heading_level("# Title") < heading_level("Chapter 1: A"));
        assert!(heading_level("Chapter 1: A") < heading_level("1.2 Fees"));
    }

    #[test]
    fn sections_are_the_highest_headings_that_repeat_without_running_heads() {
        let pages = vec![
            page(1, "# Annual report\nACME CONFIDENTIAL\nIntro text."),
            page(
                2,
                "ACME CONFIDENTIAL\n## Sales\nSales grew.\n1.1 Detail\nMore.",
            ),
            page(3, "ACME CONFIDENTIAL\n## Costs\nCosts fell."),
        ];
        let h: Vec<String> = headings(&pages).into_iter().map(|h| h.text).collect();
        assert_eq!(h, ["## Sales", "## Costs"]);
        let chunks = section_chunks(&pages, &headings(&pages), 10);
        let layout = sections(&chunks, &headings(&pages));
        let spans: Vec<(Option<&str>, Option<u32>, Option<u32>)> = layout
            .sections
            .iter()
            .map(|s| (s.heading.as_deref(), s.first_page, s.last_page))
            .collect();
        assert_eq!(
            spans,
            [
                (None, Some(1), Some(1)),
                (Some("## Sales"), Some(2), Some(2)),
                (Some("## Costs"), Some(3), Some(3)),
            ]
        );
    }

    #[test]
    fn lines_repeated_across_sections_are_read_once_not_in_each_section() {
        let pages = vec![
            page(
                1,
                "Chapter 1: Bees\nStandard clause.\nOwn refrain.\nHives swarm.",
            ),
            page(2, "Standard clause.\nOwn refrain.\nQueens are marked."),
            page(3, "Own refrain.\nStandard clause."),
            page(4, "Chapter 2: Ice\nStandard clause.\nGlaciers retreat."),
            page(5, "Ice is old."),
        ];
        let h = headings(&pages);
        let recurring = recurring_lines(&pages, &h);
        assert_eq!(
            recurring,
            [Point {
                text: "Standard clause.".into(),
                page: Some(1)
            }]
        );
        // "Own refrain." is on three pages, all of one section: it is that section's.
        let read = without_lines(&pages, &recurring);
        assert_eq!(read[1].text, "Own refrain.\nQueens are marked.");
        assert_eq!(read[3].text, "Chapter 2: Ice\nGlaciers retreat.");
    }

    #[test]
    fn markdown_without_pages_is_summarised_by_its_headings_without_citations() {
        let text = Page {
            part: 1,
            kind: "text".into(),
            file: None,
            number: None,
            text: "# Notes\nIntro.\n\n## Sales\nSales grew.\n\n## Costs\nCosts fell.".into(),
        };
        let h = headings(std::slice::from_ref(&text));
        let chunks = section_chunks(std::slice::from_ref(&text), &h, 1000);
        let layout = sections(&chunks, &h);
        let titles: Vec<Option<&str>> = layout
            .sections
            .iter()
            .map(|s| s.heading.as_deref())
            .collect();
        assert_eq!(titles, [None, Some("## Sales"), Some("## Costs")]);
        assert_eq!(layout.chunk_sections, [vec![0, 1, 2]]);
        let schema = map_schema(&layout.sections.iter().collect::<Vec<_>>(), 2, false);
        assert!(
            schema["properties"]["section_3"]["properties"]["points"]["items"]["properties"]
                .get("page")
                .is_none()
        );
        let s = SectionSummary {
            heading: Some("## Sales".into()),
            first_page: None,
            last_page: None,
            topic: "Sales grew".into(),
            points: vec![],
        };
        assert_eq!(write_line(&[s], 20), "## Sales: Sales grew.");
    }

    #[test]
    fn a_chunk_starts_at_a_section_once_it_is_half_full() {
        let body = "word ".repeat(80); // 100 tokens a page
        let mut pages = Vec::new();
        for n in 1..=6 {
            let heading = if n % 3 == 1 {
                format!("Chapter {}: Topic\n", n / 3 + 1)
            } else {
                String::new()
            };
            pages.push(page(n, &format!("{heading}{body}")));
        }
        let h = headings(&pages);
        assert_eq!(h.len(), 2);
        let chunks = section_chunks(&pages, &h, 400);
        let spans: Vec<String> = chunks.iter().map(Chunk::span).collect();
        assert_eq!(
            spans,
            ["pages 1-3 of report.pdf", "pages 4-6 of report.pdf"]
        );
    }

    fn section(heading: &str, first: u32, topic: &str, points: usize) -> SectionSummary {
        SectionSummary {
            heading: Some(heading.into()),
            first_page: Some(first),
            last_page: Some(first + 9),
            topic: topic.into(),
            points: (0..points)
                .map(|i| Point {
                    text: format!("point {i} of {heading}"),
                    page: Some(first + i as u32),
                })
                .collect(),
        }
    }

    #[test]
    fn the_summary_keeps_a_line_per_section_within_its_words_and_says_what_it_merged() {
        let sections: Vec<SectionSummary> = (0..10)
            .map(|i| {
                section(
                    &format!("Chapter {}", i + 1),
                    i * 10 + 1,
                    "what it is about",
                    3,
                )
            })
            .collect();
        let text = write_summary(&sections, &[], 250);
        assert_eq!(text.lines().count(), 10, "{text}");
        assert!(count_words(&text) <= 250, "{text}");
        assert!(
            text.starts_with(
                "Chapter 1 (pp. 1-10): what it is about [p. 1]. point 0 of Chapter 1 [p. 1]."
            ),
            "{text}"
        );
        let short = write_summary(&sections, &[], 60);
        assert!(count_words(&short) <= 60, "{short}");
        for i in 1..=10 {
            assert!(short.contains(&format!("Chapter {i}")), "{short}");
        }
        assert!(
            short.ends_with("(To fit 60 words, sections share lines: 1-2, 3-4, 5-6, 7-8, 9-10.)"),
            "{short}"
        );
        assert!(
            short.starts_with("Chapter 1; Chapter 2 (pp. 1-20):"),
            "{short}"
        );
    }

    #[test]
    fn citations_the_model_copies_into_its_words_are_removed() {
        assert_eq!(
            clean(" Glaciers  retreat [p. 4] fast [p.5]"),
            "Glaciers retreat fast"
        );
    }
}
