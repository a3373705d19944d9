//! PDF text in reading order. pdf-extract walks a page's content stream and reports every
//! glyph with its position; the order of the stream is the order the producer wrote it in,
//! which for invoices is often not the order a person reads ("993548900Factuurnummer:",
//! a footer before the header). [`LayoutText`] collects the glyphs of each page and lays
//! them out again as lines from top to bottom, left to right, with wide gaps between
//! columns kept as runs of spaces, as `pdftotext -layout` does: a label and its value then
//! sit on one line, in that order.

use pdf_extract::{Document, MediaBox, OutputDev, OutputError, Transform};

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

/// The text of every page of a PDF, laid out in reading order.
pub fn pages(bytes: &[u8]) -> Result<Vec<String>, OutputError> {
    let mut doc = Document::load_mem(bytes)?;
    if doc.is_encrypted() {
        // Many PDFs are "encrypted" with an empty user password only to set permissions.
        doc.decrypt("")?;
    }
    let mut out = LayoutText::default();
    pdf_extract::output_doc(&doc, &mut out)?;
    Ok(out.into_pages())
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
