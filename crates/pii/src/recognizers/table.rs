//! Tables: a header row whose cells name their columns ("Nom;Prénom;Téléphone;Date de
//! naissance", "name | e-mail | telefoon | geboortedatum", tab- or comma-separated), and
//! the rows under it. A cell under a name column is a person, under a birth-date column a
//! date of birth, under a phone column a phone number: the header says what the cell is,
//! where no word on the row does ("KAYA;Elif;…;03/04/2002", "Ferraro,Giuseppina,…").
//!
//! Rows are the lines right after the header that have the header's separator; a quote
//! prefix ("> ") is skipped on every line.

use std::sync::LazyLock;

use regex::Regex;

use super::dob::DATE;
use crate::detect::{Candidate, DetectOptions, PiiKind};
use crate::names::is_not_a_name;

/// Lower-case particles that may open a surname cell ("von dem Knesebeck, Korbinian").
const PARTICLES: &[&str] = &[
    "van", "von", "de", "der", "den", "dem", "del", "della", "di", "da", "du", "des", "la", "le",
    "ten", "ter", "tom", "zu", "zur",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Column {
    Person,
    Phone,
    Birth,
    Other,
}

/// A cell of a name column: capitalised words, particles, initials, "Surname, Given".
static NAME_CELL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[\p{L}\p{M}][\p{L}\p{M}'’.\-]*)(?:,?[ \u{a0}]+[\p{L}\p{M}][\p{L}\p{M}'’.\-]*){0,5}$",
    )
    .expect("name cell pattern")
});
/// A cell of a phone column.
static PHONE_CELL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\(?\+?[0-9][0-9 \u{a0}()./\-]{4,24}[0-9]$").expect("phone cell pattern")
});

/// What a header cell says its column holds; `None` when the cell is no label.
fn column_of(cell: &str) -> Option<Column> {
    if cell.len() > 48 {
        return None;
    }
    let cell = cell
        .trim()
        .trim_matches(['"', '*', ':'])
        .trim()
        .to_lowercase();
    if cell.is_empty()
        || cell.chars().count() > 32
        || cell.contains(['@', '[', ']'])
        || cell.chars().any(|c| c.is_ascii_digit())
    {
        return None;
    }
    const BIRTH: [&str; 13] = [
        "geburtsdatum",
        "geb.",
        "geboren",
        "naissance",
        "nascita",
        "nacimiento",
        "fecha nac",
        "geboortedatum",
        "geboren op",
        "dob",
        "d.o.b",
        "birth",
        "born",
    ];
    const PHONE: [&str; 12] = [
        "tel", "tél", "phone", "fon", "handy", "mobil", "móvil", "movil", "gsm", "cell",
        "portable", "fax",
    ];
    const PERSON: &[&str] = &[
        "name",
        "nom",
        "prénom",
        "prenom",
        "naam",
        "voornaam",
        "achternaam",
        "nombre",
        "apellido",
        "nome",
        "cognome",
        "nominativo",
        "vorname",
        "nachname",
        "surname",
        "first name",
        "last name",
        "given name",
        "teilnehmer",
        "participant",
        "partecipante",
        "deelnemer",
        // People a row names beside its first person: parents, guardians, contacts.
        "parent",
        "guardian",
        "ouder",
        "verzorger",
        "eltern",
        "elternteil",
        "erziehungsberechtigter",
        "genitore",
        "tutore",
        "tuteur",
        "tutrice",
        "tutor",
        "padre",
        "madre",
        "mother",
        "father",
        "mutter",
        "vater",
        "mère",
        "père",
        "moeder",
        "vader",
        "contact",
        "kontakt",
        "contatto",
        "contacto",
        "ansprechpartner",
        // Whom a row is about.
        "patient",
        "patiënt",
        "paziente",
        "paciente",
        "employee",
        "mitarbeiter",
        "medewerker",
        "dipendente",
        "empleado",
        "employé",
        "child",
        "kind",
        "enfant",
        "bambino",
        "niño",
        "student",
        "schüler",
        "leerling",
        "élève",
        "alunno",
        "alumno",
        "passenger",
        "passagier",
        "passager",
        "passeggero",
        "pasajero",
        "guest",
        "gast",
        "invité",
        "ospite",
        "invitado",
        "attendee",
    ];
    let words: Vec<&str> = cell
        .split(|c: char| !c.is_alphanumeric() && c != '.')
        .filter(|w| !w.is_empty())
        .collect();
    if words.len() > 4 {
        return None;
    }
    if BIRTH.iter().any(|w| cell.contains(w)) {
        return Some(Column::Birth);
    }
    if words.iter().any(|w| {
        PHONE.iter().any(|p| w.starts_with(p)) || w.ends_with("fon") || w.ends_with("fono")
    }) && !cell.contains("mail")
    {
        return Some(Column::Phone);
    }
    // Plurals count as the word ("Apellidos", "Noms", "Namen").
    let person_word = |w: &str| {
        [
            w,
            w.strip_suffix('s').unwrap_or(w),
            w.strip_suffix("en").unwrap_or(w),
        ]
        .iter()
        .any(|w| PERSON.contains(w))
    };
    if words
        .iter()
        .any(|w| person_word(w) || w.ends_with("name") || w.ends_with("namen"))
        && ![
            "firma",
            "company",
            "société",
            "empresa",
            "azienda",
            "bedrijf",
            "produkt",
            "product",
            "file",
            "datei",
            "user",
            "benutzer",
        ]
        .iter()
        .any(|w| cell.contains(w))
    {
        return Some(Column::Person);
    }
    Some(Column::Other)
}

/// The separator of a header line, if it has one that splits it into three cells or more.
fn separator(line: &str) -> Option<char> {
    if line.len() > 400 {
        return None;
    }
    let mut counts = [0u8; 4];
    for b in line.bytes() {
        match b {
            b'\t' => counts[0] = counts[0].saturating_add(1),
            b'|' => counts[1] = counts[1].saturating_add(1),
            b';' => counts[2] = counts[2].saturating_add(1),
            b',' => counts[3] = counts[3].saturating_add(1),
            _ => {}
        }
    }
    if counts.iter().all(|&c| c < 2) {
        return None;
    }
    ['\t', '|', ';', ',']
        .into_iter()
        .find(|&s| line.split(s).filter(|c| !c.trim().is_empty()).count() >= 3)
}

/// Skips a quote prefix ("> ", ">> ") and returns the byte offset of the content.
fn content_start(line: &str) -> usize {
    line.len() - line.trim_start_matches(['>', ' ']).len()
}

/// A Markdown-style row ("| Nombre | Apellidos |") without its outer pipes: the offset of
/// what is left within `content`, and that part.
fn inner_cells(content: &str) -> (usize, &str) {
    let trimmed = content.trim_end();
    match trimmed.strip_prefix('|') {
        Some(inner) => (1, inner.strip_suffix('|').unwrap_or(inner)),
        None => (0, trimmed.strip_suffix('|').unwrap_or(trimmed)),
    }
}

/// A Markdown table's rule under its header ("|---|:---:|").
fn is_rule(content: &str) -> bool {
    let t = content.trim();
    t.contains('-') && t.chars().all(|c| matches!(c, '|' | '-' | ':' | ' ' | '+'))
}

/// Cells of `line` (starting at byte `base` of the text) split on `sep`: (start, end).
fn cells(line: &str, base: usize, sep: char) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in line.char_indices().chain([(line.len(), sep)]) {
        if c == sep {
            let cell = &line[start..i];
            let lead = cell.len() - cell.trim_start().len();
            let trail = cell.len() - cell.trim_end().len();
            out.push((base + start + lead, base + i - trail.min(cell.len() - lead)));
            start = i + c.len_utf8();
        }
    }
    out
}

pub(super) fn find(text: &str, _opts: &DetectOptions, out: &mut Vec<Candidate>) {
    let mut lines = Vec::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        lines.push((pos, body));
        pos += line.len();
    }
    let mut i = 0;
    while i < lines.len() {
        let (_, line) = lines[i];
        let skip = content_start(line);
        let content = &line[skip..];
        let Some(sep) = separator(content) else {
            i += 1;
            continue;
        };
        let content = if sep == '|' {
            inner_cells(content).1
        } else {
            content
        };
        let header: Option<Vec<Column>> = content
            .split(sep)
            .map(column_of)
            .collect::<Option<Vec<_>>>();
        let Some(header) = header.filter(|h| h.iter().any(|c| *c != Column::Other)) else {
            i += 1;
            continue;
        };
        // A "Name" column is a person's only in a table of people: one with an address,
        // a phone number or a birth date beside it ("Name;Preis;Menge" lists products).
        let people = header
            .iter()
            .any(|c| matches!(c, Column::Phone | Column::Birth))
            || content.split(sep).any(|c| {
                let c = c.to_lowercase();
                c.contains("mail") || c.contains("courriel") || c.contains("correo")
            });
        let mut j = i + 1;
        while j < lines.len() {
            let (row_base, row) = lines[j];
            let mut skip = content_start(row);
            let mut content = &row[skip..];
            if !content.contains(sep) || content.trim().is_empty() {
                break;
            }
            if sep == '|' {
                if is_rule(content) {
                    j += 1;
                    continue;
                }
                let (lead, inner) = inner_cells(content);
                skip += lead;
                content = inner;
            }
            let cells = cells(content, row_base + skip, sep);
            for (k, column) in header.iter().enumerate() {
                let Some(&(start, end)) = cells.get(k) else {
                    break;
                };
                if start >= end {
                    continue;
                }
                let cell = &text[start..end];
                match column {
                    Column::Person
                        if people
                            && NAME_CELL.is_match(cell)
                            && cell
                                .split(' ')
                                .find(|w| !PARTICLES.contains(w))
                                .and_then(|w| w.chars().next())
                                .is_some_and(char::is_uppercase)
                            && !cell.split([' ', ',']).any(is_not_a_name) =>
                    {
                        out.push(Candidate {
                            kind: PiiKind::Person,
                            start,
                            end,
                            score: 0.75,
                        });
                    }
                    Column::Phone if PHONE_CELL.is_match(cell) => {
                        let digits = cell.chars().filter(char::is_ascii_digit).count();
                        if (6..=15).contains(&digits) {
                            out.push(Candidate {
                                kind: PiiKind::Phone,
                                start,
                                end,
                                score: 0.8,
                            });
                        }
                    }
                    Column::Birth => {
                        // The date may hold the separator ("May 9, 1970" in a comma row).
                        let line_end = row_base + row.len();
                        if let Some(m) =
                            DATE.find(&text[start..line_end]).filter(|m| m.start() == 0)
                        {
                            out.push(Candidate {
                                kind: PiiKind::DateOfBirth,
                                start,
                                end: start + m.end(),
                                score: 0.9,
                            });
                        }
                    }
                    _ => {}
                }
            }
            j += 1;
        }
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use crate::{DetectOptions, PiiKind, detect};

    fn found(text: &str) -> Vec<(PiiKind, String)> {
        detect(text, &DetectOptions::default())
            .into_iter()
            .map(|s| (s.kind, s.text))
            .collect()
    }

    #[test]
    fn semicolon_rows_under_a_header() {
        let text = "> Nom;Prénom;Courriel;Téléphone;Date de naissance\n> KAYA;Elif;elif.kaya@sfr.fr;07 37 89 70 96;03/04/2002\n";
        let f = found(text);
        assert!(f.contains(&(PiiKind::Person, "KAYA".into())), "{f:?}");
        assert!(f.contains(&(PiiKind::Person, "Elif".into())), "{f:?}");
        assert!(
            f.contains(&(PiiKind::DateOfBirth, "03/04/2002".into())),
            "{f:?}"
        );
    }

    #[test]
    fn comma_rows_without_spaces() {
        let text = "Cognome,Nome,Email,Cellulare,Data di nascita\nFerraro,Giuseppina,gf@pec.it,3451740028,15/12/1990\n";
        let f = found(text);
        assert!(f.contains(&(PiiKind::Person, "Ferraro".into())), "{f:?}");
        assert!(f.contains(&(PiiKind::Person, "Giuseppina".into())), "{f:?}");
        assert!(f.contains(&(PiiKind::Phone, "3451740028".into())), "{f:?}");
        assert!(
            f.contains(&(PiiKind::DateOfBirth, "15/12/1990".into())),
            "{f:?}"
        );
        let text = "name,email,phone,dob\nUte Ruß,ru@proton.me,329-1412224,February 5, 1945\n";
        let f = found(text);
        assert!(
            f.contains(&(PiiKind::DateOfBirth, "February 5, 1945".into())),
            "{f:?}"
        );
    }

    #[test]
    fn surname_comma_given_cells_and_pipes() {
        let text = "Name;E-Mail;Telefon;Geburtsdatum\nPfannenstiel, Brigitte;pf@mailbox.org;0179-9488853;17.04.41\n";
        let f = found(text);
        assert!(
            f.contains(&(PiiKind::Person, "Pfannenstiel, Brigitte".into())),
            "{f:?}"
        );
        assert!(
            f.contains(&(PiiKind::DateOfBirth, "17.04.41".into())),
            "{f:?}"
        );
        let text = "Name;E-Mail;Telefon;Geburtsdatum\nvon dem Knesebeck, Korbinian;k@t-online.de;+49 511 8133211;8. Juni 1989\n";
        let f = found(text);
        assert!(
            f.contains(&(PiiKind::Person, "von dem Knesebeck, Korbinian".into())),
            "{f:?}"
        );
        let text = "naam | e-mail | telefoon | geboortedatum\nSietske Zwartkruis | z@xs4all.nl | 070 - 8976939 | 27 februari 1987\n";
        let f = found(text);
        assert!(
            f.contains(&(PiiKind::Person, "Sietske Zwartkruis".into())),
            "{f:?}"
        );
        assert!(
            f.contains(&(PiiKind::DateOfBirth, "27 februari 1987".into())),
            "{f:?}"
        );
    }

    #[test]
    fn markdown_tables_with_outer_pipes_and_a_rule() {
        let text = "| Nombre | Apellidos | Fecha nac. | Teléfono |\n|---|---|:---:|---|\n| Inés | Quiroga Baeza | 03/11/1979 | +34 612 300 401 |\n| Tomás | Ruiz | 14/02/2011 | – |\n";
        let f = found(text);
        for (kind, value) in [
            (PiiKind::Person, "Inés"),
            (PiiKind::Person, "Quiroga Baeza"),
            (PiiKind::DateOfBirth, "03/11/1979"),
            (PiiKind::Phone, "+34 612 300 401"),
            (PiiKind::Person, "Tomás"),
            (PiiKind::Person, "Ruiz"),
            (PiiKind::DateOfBirth, "14/02/2011"),
        ] {
            assert!(f.contains(&(kind, value.into())), "{value}: {f:?}");
        }
        // A second person column (a parent) in a tab table.
        let text = "Naam\tGeboortedatum\tOuder/verzorger\tTelefoon\nTeun Brouwer\t02-09-2016\tMarleen Brouwer\t06 20 31 44 55\n";
        let f = found(text);
        assert!(
            f.contains(&(PiiKind::Person, "Marleen Brouwer".into())),
            "{f:?}"
        );
        // Plural headers, German.
        let text = "| Vornamen | Nachnamen | Geburtsdatum |\n| Lotte | Brandauer | 2.5.1961 |\n";
        let f = found(text);
        assert!(f.contains(&(PiiKind::Person, "Brandauer".into())), "{f:?}");
        assert!(
            f.contains(&(PiiKind::DateOfBirth, "2.5.1961".into())),
            "{f:?}"
        );
    }

    #[test]
    fn tables_without_person_columns_stay_untouched() {
        let text = "Artikel;Menge;Preis;Lieferdatum\nSchrauben M4;200;12,40;03.04.2025\n";
        assert!(found(text).is_empty(), "{:?}", found(text));
        let text = "Produktname | Menge | Datum\nEckregal Fjord | 2 | 03.04.2025\n";
        assert!(found(text).is_empty(), "{:?}", found(text));
        let text = "| Artikel | Menge | Lieferdatum |\n|---|---|---|\n| Eckregal Fjord | 2 | 03.04.2025 |\n";
        assert!(found(text).is_empty(), "{:?}", found(text));
    }
}
