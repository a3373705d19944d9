//! PDFs made here, one per way a page can show text: `Tj`, `TJ` with kerning, `'`, `"`, a
//! Type0 font (Identity-H with a ToUnicode CMap), a rotated page, a table of positioned
//! cells, a Form XObject, several content streams per page; and a scanned (image-only)
//! page. The content streams are written out as PDF syntax, so each file reads as what it
//! tests.

use lopdf::{Dictionary, Document, Object, Stream, dictionary};

/// One page: its content streams (drawn in order), its XObjects by name, and a `/Rotate`.
struct Page {
    streams: Vec<Vec<u8>>,
    xobjects: Vec<(&'static str, Stream)>,
    rotate: Option<i64>,
}

impl Page {
    fn new(content: impl Into<Vec<u8>>) -> Self {
        Page {
            streams: vec![content.into()],
            xobjects: Vec::new(),
            rotate: None,
        }
    }
}

/// A PDF string literal of WinAnsi text (Latin-1 here, and the euro sign).
fn lit(text: &str) -> Vec<u8> {
    let mut out = vec![b'('];
    for c in text.chars() {
        let byte = match c {
            '€' => 0x80,
            c if (c as u32) < 256 => c as u32 as u8,
            c => panic!("{c:?} is not in the fixtures' WinAnsi subset"),
        };
        if matches!(byte, b'(' | b')' | b'\\') {
            out.push(b'\\');
        }
        out.push(byte);
    }
    out.push(b')');
    out
}

/// Content-stream text with `{}` placeholders filled by string literals.
fn content(template: &str, strings: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pieces = template.split("{}");
    out.extend_from_slice(pieces.next().unwrap_or("").as_bytes());
    for (piece, s) in pieces.zip(strings.iter().chain(std::iter::repeat(&""))) {
        out.extend_from_slice(&lit(s));
        out.extend_from_slice(piece.as_bytes());
    }
    out
}

/// A document of `pages`, with Helvetica as /F1 and (when given) a Type0 font and its
/// ToUnicode CMap as /F2. Streams are indirect objects, as the format requires.
fn document(pages: Vec<Page>, type0: Option<(Dictionary, Stream)>) -> Vec<u8> {
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let helvetica = doc.add_object(dictionary! {
        "Type" => "Font",
        "Subtype" => "Type1",
        "BaseFont" => "Helvetica",
        "Encoding" => "WinAnsiEncoding",
    });
    let mut fonts = dictionary! { "F1" => helvetica };
    if let Some((mut font, to_unicode)) = type0 {
        font.set("ToUnicode", doc.add_object(to_unicode));
        let id = doc.add_object(font);
        fonts.set("F2", id);
    }
    let mut kids = Vec::new();
    for page in pages {
        let streams: Vec<Object> = page
            .streams
            .into_iter()
            .map(|bytes| doc.add_object(Stream::new(Dictionary::new(), bytes)).into())
            .collect();
        let contents = if streams.len() == 1 {
            streams[0].clone()
        } else {
            Object::Array(streams)
        };
        let mut resources = dictionary! { "Font" => fonts.clone() };
        if !page.xobjects.is_empty() {
            let mut xobjects = Dictionary::new();
            for (name, stream) in page.xobjects {
                xobjects.set(name, doc.add_object(stream));
            }
            resources.set("XObject", xobjects);
        }
        let mut dict = dictionary! {
            "Type" => "Page",
            "Parent" => pages_id,
            "Contents" => contents,
            "Resources" => resources,
        };
        if let Some(rotate) = page.rotate {
            dict.set("Rotate", rotate);
        }
        kids.push(doc.add_object(dict).into());
    }
    let count = kids.len() as i64;
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => kids,
            "Count" => count,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog);
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).expect("writing a fixture PDF");
    bytes
}

fn tj() -> Vec<u8> {
    document(
        vec![
            Page::new(content(
                "BT /F1 16 Tf 72 770 Td {} Tj ET \
                 BT /F1 11 Tf 72 730 Td {} Tj 0 -16 Td {} Tj 0 -16 Td {} Tj ET \
                 BT /F1 11 Tf 400 730 Td {} Tj 0 -16 Td {} Tj ET",
                &[
                    "INVOICE 2026-0412",
                    "Bill to: Müller & Söhne GmbH, Königstraße 12",
                    "Issued: 14 November 2026   Due: 14 December 2026",
                    "Amount due: € 1,249.50 (VAT 19% included)",
                    "Customer no. K-88213",
                    "Page 1 of 2",
                ],
            )),
            Page::new(content(
                "BT /F1 11 Tf 72 770 Td {} Tj 0 -16 Td {} Tj ET",
                &[
                    "Payment by transfer to IBAN DE89 3704 0044 0532 0130 00 within 30 days.",
                    "Late payment incurs interest of 9 percentage points above the base rate.",
                ],
            )),
        ],
        None,
    )
}

fn tj_kerning() -> Vec<u8> {
    // Small offsets are kerning inside a word; -300 and wider are the spaces of justified
    // text, as producers that never draw a space glyph write them.
    document(
        vec![Page::new(
            "BT /F1 12 Tf 72 760 Td \
             [(T) 80 (otal) -320 (amount) -330 (payable) -300 (within) -310 (thirty) -300 (days)] TJ \
             0 -18 Td [(W) 60 (ar) -15 (ranty:) -400 (AV) 70 (A) -350 (Systems) -300 (B.V.) -300 (Rotterdam)] TJ \
             0 -18 Td [(Reference) -280 (PO-) 20 (7731) -290 (delivered) -300 (on) -300 (2026-10-02)] TJ \
             ET",
        )],
        None,
    )
}

fn single_quote() -> Vec<u8> {
    // `'` moves to the next line (by the leading) and shows the string.
    document(
        vec![Page::new(content(
            "BT /F1 11 Tf 14 TL 72 780 Td {} Tj {} ' {} ' {} ' {} ' ET",
            &[
                "SERVICE AGREEMENT",
                "Between Northwind Traders Ltd, 4 Harbour Street, Leith, and",
                "Contoso Pharmaceuticals SA, Avenue Louise 54, 1050 Brussels.",
                "The term is twelve months from 1 January 2027, renewable once.",
                "Either party may terminate with 90 days written notice.",
            ],
        ))],
        None,
    )
}

fn double_quote() -> Vec<u8> {
    // `"` sets word and character spacing, moves to the next line and shows the string.
    document(
        vec![Page::new(content(
            "BT /F1 11 Tf 14 TL 72 780 Td {} Tj 2 0 {} \" 0.5 0.2 {} \" 0 0 {} \" ET",
            &[
                "DELIVERY NOTE 55-0193",
                "Pallets: 4   Weight: 1,820 kg   Carrier: Dachser",
                "Received in good order by the undersigned on 3 March 2026.",
                "Signature and stamp of the consignee.",
            ],
        ))],
        None,
    )
}

/// A Type0 font over Identity-H: each character is a two-byte code whose meaning only the
/// ToUnicode CMap gives.
fn cid_font() -> Vec<u8> {
    let lines = [
        "Facture n° 2026-117 — Société Générale d’Électricité",
        "Montant TTC : 3 480,00 € · échéance 31/01/2027",
        "Προμηθευτής: Ελληνικά Ηλεκτρικά ΑΕ",
    ];
    let mut chars: Vec<char> = lines.iter().flat_map(|l| l.chars()).collect();
    chars.sort_unstable();
    chars.dedup();
    let code = |c: char| chars.iter().position(|&x| x == c).expect("charset") as u16 + 1;
    let mut cmap = String::from(
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n\
         /CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n\
         /CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n\
         1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n",
    );
    for chunk in chars.chunks(100) {
        cmap.push_str(&format!("{} beginbfchar\n", chunk.len()));
        for &c in chunk {
            let mut utf16 = [0u16; 2];
            let units: String = c
                .encode_utf16(&mut utf16)
                .iter()
                .map(|u| format!("{u:04X}"))
                .collect();
            cmap.push_str(&format!("<{:04X}> <{units}>\n", code(c)));
        }
        cmap.push_str("endbfchar\n");
    }
    cmap.push_str("endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n");
    let widths: Vec<Object> = chars
        .iter()
        .map(|&c| Object::Integer(if c == ' ' { 280 } else { 560 }))
        .collect();

    let mut doc_pages = Vec::new();
    let mut body = b"BT /F2 12 Tf 16 TL 72 760 Td ".to_vec();
    for line in lines {
        let hex: String = line.chars().map(|c| format!("{:04X}", code(c))).collect();
        body.extend_from_slice(format!("<{hex}> Tj T* ").as_bytes());
    }
    body.extend_from_slice(b"ET");
    doc_pages.push(Page::new(body));

    let to_unicode = Stream::new(Dictionary::new(), cmap.into_bytes());
    // The font program is not embedded: text extraction needs only the CMap and widths.
    let descriptor = dictionary! {
        "Type" => "FontDescriptor",
        "FontName" => "VerreSans",
        "Flags" => 32,
        "FontBBox" => vec![0.into(), (-200).into(), 1000.into(), 900.into()],
        "ItalicAngle" => 0,
        "Ascent" => 900,
        "Descent" => -200,
        "CapHeight" => 700,
        "StemV" => 80,
    };
    let font = dictionary! {
        "Type" => "Font",
        "Subtype" => "Type0",
        "BaseFont" => "VerreSans",
        "Encoding" => "Identity-H",
        "DescendantFonts" => vec![Object::Dictionary(dictionary! {
            "Type" => "Font",
            "Subtype" => "CIDFontType2",
            "BaseFont" => "VerreSans",
            "CIDSystemInfo" => dictionary! {
                "Registry" => Object::string_literal("Adobe"),
                "Ordering" => Object::string_literal("Identity"),
                "Supplement" => 0,
            },
            "FontDescriptor" => descriptor,
            "DW" => 1000,
            "W" => vec![1.into(), Object::Array(widths)],
            "CIDToGIDMap" => "Identity",
        })],
    };
    document(doc_pages, Some((font, to_unicode)))
}

fn rotated() -> Vec<u8> {
    let mut page = Page::new(content(
        "BT /F1 11 Tf 72 760 Td {} Tj 0 -16 Td {} Tj 0 -16 Td {} Tj ET",
        &[
            "Landscape schedule of deliveries, week 48",
            "Monday: Utrecht depot, 12 crates of glassware",
            "Thursday: Antwerp port, container MSKU 449201-7",
        ],
    ));
    page.rotate = Some(90);
    document(vec![page], None)
}

fn table() -> Vec<u8> {
    // Cells placed one by one with Tm, column by column (as some report writers do).
    let rows = [
        ["Item", "Qty", "Unit price", "Amount"],
        ["Glass panels 6mm", "12", "84.00", "1,008.00"],
        ["Aluminium frames", "12", "37.50", "450.00"],
        ["Installation hours", "6", "55.00", "330.00"],
        ["Total excl. VAT", "", "", "1,788.00"],
    ];
    let columns = [72.0, 260.0, 320.0, 430.0];
    let mut body = b"BT /F1 10 Tf ".to_vec();
    for (col, x) in columns.iter().enumerate() {
        for (row, cells) in rows.iter().enumerate() {
            if cells[col].is_empty() {
                continue;
            }
            let y = 700.0 - 20.0 * row as f64;
            body.extend_from_slice(format!("1 0 0 1 {x} {y} Tm ").as_bytes());
            body.extend_from_slice(&lit(cells[col]));
            body.extend_from_slice(b" Tj ");
        }
    }
    body.extend_from_slice(b"ET 0.5 w 72 712 m 500 712 l S 72 612 m 500 612 l S");
    document(vec![Page::new(body)], None)
}

fn form_xobject() -> Vec<u8> {
    // The letterhead is a form drawn twice (scaled); the body is on the page itself.
    let form = Stream::new(
        dictionary! {
            "Type" => "XObject",
            "Subtype" => "Form",
            "BBox" => vec![0.into(), 0.into(), 400.into(), 60.into()],
        },
        content(
            "BT /F1 14 Tf 0 40 Td {} Tj /F1 9 Tf 0 -14 Td {} Tj ET",
            &[
                "Fabrikam Legal LLP",
                "12 Bishopsgate, London EC2N 4AJ - VAT GB 294 7734 12",
            ],
        ),
    );
    let mut page = Page::new(content(
        "q 1 0 0 1 72 760 cm /Head Do Q \
         BT /F1 11 Tf 72 700 Td {} Tj 0 -16 Td {} Tj ET \
         q 0.8 0 0 0.8 72 80 cm /Head Do Q",
        &[
            "Our fee note for the matter Harbour Lease, reference FL-2291.",
            "Professional fees: 7,400.00 GBP; disbursements: 312.40 GBP.",
        ],
    ));
    page.xobjects.push(("Head", form));
    document(vec![page], None)
}

fn multiple_streams() -> Vec<u8> {
    // The page's /Contents is an array; a text object may start in one stream and end in
    // the next, since the streams are one content stream cut in pieces.
    let mut page = Page::new(content(
        "q BT /F1 11 Tf 72 760 Td {} Tj",
        &["Minutes of the board meeting held on 5 February 2026"],
    ));
    page.streams.push(content(
        " 0 -16 Td {} Tj 0 -16 Td {} Tj",
        &[
            "Present: A. Janssens (chair), B. Okafor, C. Lindqvist",
            "Resolved: to approve the budget of 2.4 million euros.",
        ],
    ));
    page.streams.push(content(
        " 0 -16 Td {} Tj ET Q",
        &["Next meeting: 7 May 2026."],
    ));
    document(vec![page], None)
}

/// Every generated file the recall measurement runs on, by name.
pub fn text_pdfs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("gen-tj", tj()),
        ("gen-tj-kerning", tj_kerning()),
        ("gen-single-quote", single_quote()),
        ("gen-double-quote", double_quote()),
        ("gen-cid-identity-h", cid_font()),
        ("gen-rotate-90", rotated()),
        ("gen-table-cells", table()),
        ("gen-form-xobject", form_xobject()),
        ("gen-multiple-streams", multiple_streams()),
    ]
}

/// Two pages: text on the first, only a picture on the second (a scanned page).
pub fn scan_page_pdf() -> Vec<u8> {
    // A 4x4 grey image: no text layer whatever its pixels say.
    let image = Stream::new(
        dictionary! {
            "Type" => "XObject",
            "Subtype" => "Image",
            "Width" => 4,
            "Height" => 4,
            "ColorSpace" => "DeviceGray",
            "BitsPerComponent" => 8,
        },
        vec![0x80; 16],
    );
    let text = Page::new(content(
        "BT /F1 11 Tf 72 760 Td {} Tj ET",
        &["Cover letter: the signed contract follows as a scan."],
    ));
    let mut scan = Page::new("q 595 0 0 842 0 0 cm /Im1 Do Q");
    scan.xobjects.push(("Im1", image));
    document(vec![text, scan], None)
}

/// A PDF written object by object (object 1 the catalog, 2 the page tree, 3 the page, 4 its
/// content, 5 Helvetica, then `extra` from 6 on): for files lopdf would not write.
fn raw_pdf(content: &[u8], page_resources: &str, extra: &[Vec<u8>]) -> Vec<u8> {
    let stream = |data: &[u8], dict: &str| {
        let mut s = format!("<< /Length {} {dict} >>\nstream\n", data.len()).into_bytes();
        s.extend_from_slice(data);
        s.extend_from_slice(b"\nendstream");
        s
    };
    let mut objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 /MediaBox [0 0 595 842] >>".to_vec(),
        format!("<< /Type /Page /Parent 2 0 R /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> {page_resources} >> >>").into_bytes(),
        stream(content, ""),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
    ];
    objects.extend(extra.iter().map(|body| {
        let (dict, data) = std::str::from_utf8(body)
            .expect("ASCII")
            .split_once("|stream|")
            .expect("a form: dictionary entries |stream| content");
        stream(data.as_bytes(), dict)
    }));
    let mut out = b"%PDF-1.5\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// A form that draws itself (pdf-extract alone recursed until the stack overflowed).
pub fn self_drawing_form_pdf() -> Vec<u8> {
    raw_pdf(
        b"BT /F1 12 Tf 72 700 Td (Text before the form) Tj ET /Fm Do",
        "/XObject << /Fm 6 0 R >>",
        &[b"/Type /XObject /Subtype /Form /BBox [0 0 10 10] \
            /Resources << /XObject << /Fm 6 0 R >> >>|stream|/Fm Do"
            .to_vec()],
    )
}

/// Seven levels of forms, each drawing the next ten times: a million draws if followed.
pub fn form_fan_out_pdf() -> Vec<u8> {
    let levels: Vec<Vec<u8>> = (0..7)
        .map(|level| {
            let next = if level < 6 {
                format!("/XObject << /N {} 0 R >>", 7 + level)
            } else {
                String::new()
            };
            let draws = if level < 6 {
                "/N Do ".repeat(10)
            } else {
                String::new()
            };
            format!(
                "/Type /XObject /Subtype /Form /BBox [0 0 100 100] \
                 /Resources << /Font << /F1 5 0 R >> {next} >>|stream|\
                 BT /F1 8 Tf 0 0 Td (level{level}) Tj ET {draws}"
            )
            .into_bytes()
        })
        .collect();
    raw_pdf(b"/Fm Do", "/XObject << /Fm 6 0 R >>", &levels)
}
