//! PDF text in reading order. pdf-extract walks a page's content stream and reports every
//! glyph with its position; the order of the stream is the order the producer wrote it in,
//! which for invoices is often not the order a person reads ("993548900Factuurnummer:",
//! a footer before the header). [`LayoutText`] collects the glyphs of each page and lays
//! them out again as lines from top to bottom, left to right, with wide gaps between
//! columns kept as runs of spaces, as `pdftotext -layout` does: a label and its value then
//! sit on one line, in that order.
//!
//! pdf-extract 0.12 misses some of the format, so [`prepare`] rewrites each page's content
//! before it is walked (the choice and its measurement against `pdftotext` are in
//! docs/INTAKE.md, "PDF text"). Each page is read on its own: one broken page is marked,
//! the others still read. A page with no text at all is marked [`NO_TEXT_LAYER`] (a scan:
//! OCR is a later step), never returned as an empty string.

use lopdf::content::{Content, Operation};
use lopdf::{Dictionary, Object, ObjectId, Stream};
use pdf_extract::{Document, MediaBox, OutputDev, OutputError, Transform};

/// The text given for a page on which nothing is text.
pub const NO_TEXT_LAYER: &str =
    "[no text layer: nothing on this page is text (a scan or a picture); OCR is a later step]";

/// How the text of a page the reader failed on begins.
pub const UNREADABLE_PAGE: &str = "[page unreadable: ";

/// What reading one page gave.
#[derive(Debug, Clone, PartialEq)]
pub enum PageText {
    /// The page's text in reading order.
    Text(String),
    /// The page draws no text (a scanned page, a picture): OCR would be needed.
    NoTextLayer,
    /// The reader failed on this page (what it said).
    Failed(String),
}

impl PageText {
    /// The page as text: its text, or a bracketed line saying why there is none.
    pub fn into_text(self) -> String {
        match self {
            PageText::Text(text) => text,
            PageText::NoTextLayer => NO_TEXT_LAYER.to_string(),
            PageText::Failed(why) => format!("{UNREADABLE_PAGE}{why}]"),
        }
    }
}

/// One glyph (or the few characters a glyph maps to) where the page draws it.
#[derive(Debug, Clone)]
struct Glyph {
    /// Left edge and baseline in page space (y grows upwards).
    x: f64,
    y: f64,
    /// Right edge: `x` plus the glyph's advance.
    end: f64,
    /// The font size as drawn (text matrix and CTM applied).
    size: f64,
    text: String,
}

/// An [`OutputDev`] that keeps every glyph of a page and lays the page out at its end.
#[derive(Default)]
pub struct LayoutText {
    pages: Vec<String>,
    glyphs: Vec<Glyph>,
    in_page: bool,
}

impl LayoutText {
    /// The text of each page, in page order.
    pub fn into_pages(mut self) -> Vec<String> {
        if self.in_page {
            self.finish_page();
        }
        self.pages
    }

    /// The page just walked ([`PageText::NoTextLayer`] when it drew no glyph).
    fn take_page(&mut self) -> PageText {
        if self.in_page {
            self.finish_page();
        }
        match self.pages.pop() {
            Some(text) if !text.trim().is_empty() => PageText::Text(text),
            _ => PageText::NoTextLayer,
        }
    }

    /// Forget what a page that failed half-way drew.
    fn discard_page(&mut self) {
        self.glyphs.clear();
        self.in_page = false;
    }

    fn finish_page(&mut self) {
        let glyphs = std::mem::take(&mut self.glyphs);
        self.pages.push(layout_page(glyphs));
        self.in_page = false;
    }
}

impl OutputDev for LayoutText {
    fn begin_page(
        &mut self,
        _page_num: u32,
        _media_box: &MediaBox,
        _art_box: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), OutputError> {
        if self.in_page {
            self.finish_page();
        }
        self.in_page = true;
        Ok(())
    }

    fn end_page(&mut self) -> Result<(), OutputError> {
        self.finish_page();
        Ok(())
    }

    fn output_character(
        &mut self,
        trm: &Transform,
        width: f64,
        _spacing: f64,
        font_size: f64,
        text: &str,
    ) -> Result<(), OutputError> {
        // The text rendering matrix scales the font: its determinant is the area scale.
        let scale = (trm.m11 * trm.m22 - trm.m12 * trm.m21).abs().sqrt();
        let size = font_size * scale;
        if !size.is_finite() || size <= 0.0 || !trm.m31.is_finite() || !trm.m32.is_finite() {
            return Ok(());
        }
        if text.chars().all(char::is_whitespace) {
            // Spaces are rebuilt from the gaps between glyphs.
            return Ok(());
        }
        let text: String = text.chars().filter(|c| !c.is_control()).collect();
        if text.is_empty() {
            return Ok(());
        }
        self.glyphs.push(Glyph {
            x: trm.m31,
            y: trm.m32,
            end: trm.m31 + width.max(0.0) * size,
            size,
            text,
        });
        Ok(())
    }

    fn begin_word(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn end_word(&mut self) -> Result<(), OutputError> {
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
}

/// The text of every page of a PDF, laid out in reading order; a page without text or
/// that could not be read says so in brackets ([`PageText::into_text`]).
pub fn pages(bytes: &[u8]) -> Result<Vec<String>, OutputError> {
    Ok(read(bytes)?.into_iter().map(PageText::into_text).collect())
}

/// Every page of a PDF, read one by one. The document itself failing to load is an error;
/// a page failing is that page's [`PageText::Failed`]. When every page fails, the first
/// page's panic is raised again (the caller, [`crate::parse::pdf_pages`], reports it).
pub fn read(bytes: &[u8]) -> Result<Vec<PageText>, OutputError> {
    let mut doc = Document::load_mem(bytes)?;
    if doc.is_encrypted() {
        // Many PDFs are "encrypted" with an empty user password only to set permissions.
        doc.decrypt("")?;
    }
    prepare(&mut doc);
    let numbers: Vec<u32> = doc.get_pages().keys().copied().collect();
    if numbers.is_empty() {
        // A page tree that leads nowhere (or could not be parsed) is not an empty document.
        return Err(OutputError::IoError(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the PDF's page tree leads to no page",
        )));
    }
    let mut out = LayoutText::default();
    let mut first_panic = None;
    let mut texts = Vec::with_capacity(numbers.len());
    for number in numbers {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pdf_extract::output_doc_page(&doc, &mut out, number)
        }));
        let page = match result {
            Ok(Ok(())) => out.take_page(),
            Ok(Err(e)) => {
                out.discard_page();
                PageText::Failed(e.to_string())
            }
            Err(panic) => {
                out.discard_page();
                let why = crate::parse::panic_message(panic.as_ref());
                first_panic.get_or_insert(panic);
                PageText::Failed(format!("the PDF reader failed: {why}"))
            }
        };
        texts.push(page);
    }
    if let Some(panic) = first_panic
        && texts.iter().all(|p| matches!(p, PageText::Failed(_)))
    {
        std::panic::resume_unwind(panic);
    }
    Ok(texts)
}

/// Deepest Form XObject nesting followed, and most form copies made per document: a form
/// that draws itself, or a tree of forms each drawing the next many times, stops here.
const MAX_FORM_DEPTH: usize = 8;
const MAX_FORM_COPIES: usize = 2_000;
/// Most bytes of decoded form content copied per document: a large form drawn many times
/// would otherwise multiply into gigabytes of new objects before the copy limit.
const MAX_FORM_BYTES: usize = 64 << 20;

/// Rewrites what pdf-extract 0.12 does not follow, page by page, before it walks them:
/// - `'` and `"` (move to the next line and show a string; pdf-extract ignores them, so a
///   page written with them came back empty) become `T*` and `Tj` (with `Tw` and `Tc`);
/// - a Form XObject is walked by pdf-extract from an identity matrix, so its text landed at
///   the wrong place: each `Do` of a form now draws a copy whose content starts with the
///   matrix in effect at the `Do`;
/// - `Do` of an image is dropped (pdf-extract would parse the picture as content).
///
/// A page whose content cannot be decoded is left as it is (pdf-extract then reports it).
fn prepare(doc: &mut Document) {
    prepare_within(doc, MAX_FORM_BYTES);
}

/// [`prepare`] with at most `max_bytes` of form content copied; what it copied.
fn prepare_within(doc: &mut Document, max_bytes: usize) -> FormCopies {
    let page_ids: Vec<ObjectId> = doc.get_pages().values().copied().collect();
    let mut forms = FormCopies {
        max_bytes,
        ..FormCopies::default()
    };
    for page_id in page_ids {
        let Ok(bytes) = doc.get_page_content(page_id) else {
            continue;
        };
        let Ok(content) = Content::decode(&bytes) else {
            continue;
        };
        let mut resources = inherited_resources(doc, page_id);
        let mut changed = false;
        let operations = forms.rewrite(
            doc,
            content.operations,
            &mut resources,
            IDENTITY,
            0,
            &mut changed,
        );
        if !changed {
            continue;
        }
        let Ok(encoded) = (Content { operations }).encode() else {
            continue;
        };
        let contents = doc.add_object(Stream::new(Dictionary::new(), encoded));
        if let Ok(page) = doc.get_dictionary_mut(page_id) {
            page.set("Contents", contents);
            page.set("Resources", resources);
        }
    }
    forms
}

type Matrix = [f64; 6];
const IDENTITY: Matrix = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];

/// `a` then `b` (PDF's row-vector convention: `cm` makes CTM = M × CTM).
fn multiply(a: &Matrix, b: &Matrix) -> Matrix {
    [
        a[0] * b[0] + a[1] * b[2],
        a[0] * b[1] + a[1] * b[3],
        a[2] * b[0] + a[3] * b[2],
        a[2] * b[1] + a[3] * b[3],
        a[4] * b[0] + a[5] * b[2] + b[4],
        a[4] * b[1] + a[5] * b[3] + b[5],
    ]
}

fn matrix_of(operands: &[Object]) -> Option<Matrix> {
    let numbers: Vec<f64> = operands
        .iter()
        .map(|o| o.as_float().ok().map(f64::from))
        .collect::<Option<_>>()?;
    let m: Matrix = numbers.try_into().ok()?;
    m.iter().all(|x| x.is_finite()).then_some(m)
}

/// An object, following references (one level of indirection is all the format allows
/// for the entries read here, but a chain is followed a few steps).
fn resolve<'a>(doc: &'a Document, mut object: &'a Object) -> Option<&'a Object> {
    for _ in 0..8 {
        match object {
            Object::Reference(id) => object = doc.get_object(*id).ok()?,
            other => return Some(other),
        }
    }
    None
}

/// A page's resources, inherited from the page tree as pdf-extract looks them up, as a
/// dictionary of its own (so that adding form copies touches no other page).
fn inherited_resources(doc: &Document, page_id: ObjectId) -> Dictionary {
    let mut node = doc.get_dictionary(page_id).ok();
    for _ in 0..64 {
        let Some(dict) = node else { break };
        if let Some(Object::Dictionary(resources)) =
            dict.get(b"Resources").ok().and_then(|r| resolve(doc, r))
        {
            return resources.clone();
        }
        node = dict
            .get(b"Parent")
            .and_then(Object::as_reference)
            .and_then(|id| doc.get_dictionary(id))
            .ok();
    }
    Dictionary::new()
}

#[derive(Default)]
struct FormCopies {
    made: usize,
    /// Decoded content bytes copied so far, and the most allowed ([`MAX_FORM_BYTES`]).
    bytes: usize,
    max_bytes: usize,
}

impl FormCopies {
    /// `operations` with `'`, `"` and `Do` rewritten (see [`prepare`]); `base` is the matrix
    /// the stream is drawn under, `resources` the dictionary its names are looked up in
    /// (form copies are added to its /XObject).
    fn rewrite(
        &mut self,
        doc: &mut Document,
        operations: Vec<Operation>,
        resources: &mut Dictionary,
        base: Matrix,
        depth: usize,
        changed: &mut bool,
    ) -> Vec<Operation> {
        let mut out = Vec::with_capacity(operations.len());
        let mut ctm = base;
        let mut saved = Vec::new();
        for op in operations {
            match (op.operator.as_str(), op.operands.as_slice()) {
                ("q", _) => saved.push(ctm),
                ("Q", _) => ctm = saved.pop().unwrap_or(base),
                ("cm", operands) => {
                    if let Some(m) = matrix_of(operands) {
                        ctm = multiply(&m, &ctm);
                    }
                }
                ("'", [string]) => {
                    *changed = true;
                    out.push(Operation::new("T*", vec![]));
                    out.push(Operation::new("Tj", vec![string.clone()]));
                    continue;
                }
                ("\"", [word_spacing, char_spacing, string]) => {
                    *changed = true;
                    out.push(Operation::new("Tw", vec![word_spacing.clone()]));
                    out.push(Operation::new("Tc", vec![char_spacing.clone()]));
                    out.push(Operation::new("T*", vec![]));
                    out.push(Operation::new("Tj", vec![string.clone()]));
                    continue;
                }
                ("Do", [Object::Name(name)]) => {
                    *changed = true;
                    if let Some(copy) = self.copy_form(doc, resources, name, &ctm, depth) {
                        out.push(Operation::new("Do", vec![Object::Name(copy)]));
                    }
                    continue;
                }
                _ => {}
            }
            out.push(op);
        }
        out
    }

    /// The name of a copy of form `name` drawn under `ctm`, added to `resources`; None for
    /// an image, a missing object, or a form past the limits.
    fn copy_form(
        &mut self,
        doc: &mut Document,
        resources: &mut Dictionary,
        name: &[u8],
        ctm: &Matrix,
        depth: usize,
    ) -> Option<Vec<u8>> {
        if depth >= MAX_FORM_DEPTH || self.made >= MAX_FORM_COPIES {
            return None;
        }
        let xobjects = resources
            .get(b"XObject")
            .ok()
            .and_then(|x| resolve(doc, x))?
            .as_dict()
            .ok()?;
        let Object::Stream(form) = resolve(doc, xobjects.get(name).ok()?)? else {
            return None;
        };
        if form.dict.get(b"Subtype").and_then(Object::as_name).ok() != Some(b"Form".as_slice()) {
            return None;
        }
        let matrix = form
            .dict
            .get(b"Matrix")
            .ok()
            .and_then(|m| resolve(doc, m))
            .and_then(|m| m.as_array().ok())
            .and_then(|m| matrix_of(m))
            .unwrap_or(IDENTITY);
        // A form without resources uses those of the stream that draws it.
        let mut form_resources = match form
            .dict
            .get(b"Resources")
            .ok()
            .and_then(|r| resolve(doc, r))
        {
            Some(Object::Dictionary(d)) => d.clone(),
            _ => resources.clone(),
        };
        let bbox = form.dict.get(b"BBox").ok().cloned();
        let decoded = form.decompressed_content().ok()?;
        if self.bytes + decoded.len() > self.max_bytes {
            return None;
        }
        self.bytes += decoded.len();
        let content = Content::decode(&decoded).ok()?;
        let placed = multiply(&matrix, ctm);
        self.made += 1;
        let mut inner_changed = false;
        let mut operations = vec![Operation::new(
            "cm",
            placed.iter().map(|&x| Object::Real(x as f32)).collect(),
        )];
        operations.extend(self.rewrite(
            doc,
            content.operations,
            &mut form_resources,
            placed,
            depth + 1,
            &mut inner_changed,
        ));
        let encoded = (Content { operations }).encode().ok()?;
        let mut dict = Dictionary::new();
        dict.set("Type", Object::Name(b"XObject".to_vec()));
        dict.set("Subtype", Object::Name(b"Form".to_vec()));
        if let Some(bbox) = bbox {
            dict.set("BBox", bbox);
        }
        dict.set("Resources", form_resources);
        let id = doc.add_object(Stream::new(dict, encoded));
        let copy = format!("VerreForm{}", self.made).into_bytes();
        let mut xobjects = resources
            .get(b"XObject")
            .ok()
            .and_then(|x| resolve(doc, x))
            .and_then(|x| x.as_dict().ok())
            .cloned()
            .unwrap_or_default();
        xobjects.set(copy.clone(), id);
        resources.set("XObject", xobjects);
        Some(copy)
    }
}

/// Lines top to bottom; in each line glyphs left to right. A gap wider than a few
/// characters becomes a column break (three spaces), a vertical gap a blank line.
fn layout_page(mut glyphs: Vec<Glyph>) -> String {
    if glyphs.is_empty() {
        return String::new();
    }
    // Top first, then left first.
    glyphs.sort_by(|a, b| b.y.total_cmp(&a.y).then(a.x.total_cmp(&b.x)));

    // A glyph joins the current line when its baseline is within a fraction of the font
    // size of the line's first baseline (subscripts and mixed fonts stay on the line).
    let mut lines: Vec<Vec<Glyph>> = Vec::new();
    let mut line_y = f64::NAN;
    let mut line_size = 0.0;
    for g in glyphs {
        let tolerance = 0.45 * g.size.min(line_size).max(1.0);
        if lines.is_empty() || (line_y - g.y).abs() > tolerance {
            line_y = g.y;
            line_size = g.size;
            lines.push(Vec::new());
        }
        lines.last_mut().expect("a line was pushed").push(g);
    }

    let mut out = String::new();
    let mut prev: Option<(f64, f64)> = None;
    for mut line in lines {
        line.sort_by(|a, b| a.x.total_cmp(&b.x));
        let y = line[0].y;
        let size = line.iter().map(|g| g.size).fold(0.0, f64::max);
        if let Some((prev_y, prev_size)) = prev {
            out.push('\n');
            // A gap of more than about two lines of text is a paragraph break.
            if prev_y - y > 2.0 * prev_size.max(size) {
                out.push('\n');
            }
        }
        prev = Some((y, size));
        out.push_str(&line_text(&line));
    }
    out
}

fn line_text(line: &[Glyph]) -> String {
    let mut text = String::new();
    let mut last: Option<&Glyph> = None;
    for g in line {
        if let Some(p) = last {
            // Fake bold draws the same glyph twice at (almost) the same place.
            if g.text == p.text && (g.x - p.x).abs() < 0.1 * g.size {
                continue;
            }
            let gap = g.x - p.end;
            let em = g.size.max(p.size);
            if gap > 2.0 * em {
                text.push_str("   ");
            } else if gap > 0.15 * em {
                text.push(' ');
            }
        }
        text.push_str(&g.text);
        last = Some(g);
    }
    text.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_copies_stop_at_the_byte_limit() {
        // A 64 KB form drawn 100 times: 6.4 MB of copies if each were made.
        let mut doc = Document::with_version("1.5");
        let form_content = "0 0 m 1 1 l S\n".repeat(64 * 1024 / 14);
        let mut form_dict = Dictionary::new();
        form_dict.set("Type", Object::Name(b"XObject".to_vec()));
        form_dict.set("Subtype", Object::Name(b"Form".to_vec()));
        let form = doc.add_object(Stream::new(form_dict, form_content.into_bytes()));
        let mut xobjects = Dictionary::new();
        xobjects.set("Fm", form);
        let mut resources = Dictionary::new();
        resources.set("XObject", xobjects);
        let content = doc.add_object(Stream::new(
            Dictionary::new(),
            "/Fm Do\n".repeat(100).into_bytes(),
        ));
        let pages_id = doc.new_object_id();
        let mut page = Dictionary::new();
        page.set("Type", Object::Name(b"Page".to_vec()));
        page.set("Parent", pages_id);
        page.set("Contents", content);
        page.set("Resources", resources);
        let page = doc.add_object(page);
        let mut pages = Dictionary::new();
        pages.set("Type", Object::Name(b"Pages".to_vec()));
        pages.set("Kids", vec![Object::Reference(page)]);
        pages.set("Count", 1);
        doc.objects.insert(pages_id, Object::Dictionary(pages));
        let mut catalog = Dictionary::new();
        catalog.set("Type", Object::Name(b"Catalog".to_vec()));
        catalog.set("Pages", pages_id);
        let catalog = doc.add_object(catalog);
        doc.trailer.set("Root", catalog);

        let copies = prepare_within(&mut doc, 1 << 20);
        assert!(copies.bytes <= 1 << 20, "{} bytes copied", copies.bytes);
        assert!((10..=16).contains(&copies.made), "{} copies", copies.made);
    }

    fn glyphs(items: &[(f64, f64, &str)]) -> Vec<Glyph> {
        // 10-point text whose glyphs are 6 points wide per character.
        items
            .iter()
            .map(|&(x, y, t)| Glyph {
                x,
                y,
                end: x + 6.0 * t.chars().count() as f64,
                size: 10.0,
                text: t.to_string(),
            })
            .collect()
    }

    #[test]
    fn lines_read_top_to_bottom_and_left_to_right_whatever_the_drawing_order() {
        // Drawn value first, then label, then a header above both (as some producers do).
        let page = layout_page(glyphs(&[
            (120.0, 700.0, "993548900"),
            (10.0, 700.0, "Factuurnummer:"),
            (10.0, 760.0, "FACTUUR"),
            (400.0, 760.0, "Coolblue"),
        ]));
        assert_eq!(page, "FACTUUR   Coolblue\n\nFactuurnummer:   993548900");
    }

    #[test]
    fn word_gaps_become_one_space_and_touching_glyphs_none() {
        let page = layout_page(glyphs(&[
            (10.0, 500.0, "In"),
            (22.0, 500.0, "voice"),
            (55.0, 500.0, "No"),
        ]));
        assert_eq!(page, "Invoice No");
    }

    #[test]
    fn a_slightly_lower_baseline_stays_on_its_line_and_fake_bold_is_drawn_once() {
        let page = layout_page(glyphs(&[
            (10.0, 500.0, "Total"),
            (10.3, 500.0, "Total"),
            (60.0, 498.5, "34,73"),
            (10.0, 486.0, "next"),
        ]));
        assert_eq!(page, "Total 34,73\nnext");
    }

    #[test]
    fn an_empty_page_is_empty() {
        assert_eq!(layout_page(Vec::new()), "");
    }
}
