//! Phone numbers. A run of digits and separators is a candidate; libphonenumber's
//! metadata (the `phonenumber` crate) decides whether it is a valid number:
//! - international form (`+33 6 12 34 56 78`, `0049 30 1234567`): valid for its country;
//! - national form: valid in one of [`DetectOptions::phone_regions`] and written with the
//!   trunk prefix `0`, or NANP-shaped (`(870) 931-0505`) when US or CA is a region;
//! - any other run of digits (an invoice or customer number can be a valid number) only
//!   next to a word such as "Tel", "phone", "Fax", "Handy", "portable".
//!
//! Dates, amounts and numbers preceded by a reference label ("Invoice", "Kundennummer",
//! "IBAN") are not phone numbers.

use std::str::FromStr;
use std::sync::LazyLock;

use phonenumber::country;
use regex::Regex;

use super::{char_at, char_before, line_start};
use crate::detect::{Candidate, DetectOptions, PiiKind};

static RUN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+|\(\+?)?[0-9](?:(?:[ \u{a0}]?[.\-/][ \u{a0}]?|[ \u{a0}]|\)[ \u{a0}\-]?|[ \u{a0}]?\()?[0-9]){6,16}")
        .expect("phone pattern")
});
static DATE_SHAPED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[0-9]{1,2}([./\-])[0-9]{1,2}[./\-][0-9]{2,4}|[0-9]{4}([./\-])[0-9]{1,2}[./\-][0-9]{1,2})(?:\s*[\-/]\s*(?:[0-9]{1,2}[./\-][0-9]{1,2}[./\-][0-9]{2,4}|[0-9]{4}[./\-][0-9]{1,2}[./\-][0-9]{1,2}))?$",
    )
    .expect("date pattern")
});
/// A day, month and four-digit year inside a longer run ("02/05/2024 (1 980").
static HAS_DATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^0-9])[0-9]{1,2}[./][0-9]{1,2}[./](?:19|20)[0-9]{2}(?:$|[^0-9])")
        .expect("date pattern")
});
static NANP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:\([0-9]{3}\)[ \-]?|[0-9]{3}[ .\-])[0-9]{3}[ .\-][0-9]{4}$")
        .expect("NANP pattern")
});

/// Words that announce a phone number (lower case).
const PHONE_WORDS: [&str; 54] = [
    "tel",
    "mob",
    "móvil",
    "movil",
    "port.",
    "tlf",
    "cel",
    // Verbs: "rufen Sie mich an", "rappelez-moi au", "mi chiami al", "llámeme al", "bel me op".
    "anruf",
    "rückruf",
    "erreich",
    "rappel",
    "joindre",
    "joignable",
    "chiam",
    "richiam",
    "llam",
    "bel me",
    "bellen",
    "terugbel",
    "tél",
    "phone",
    "fax",
    "mobile",
    "mobil",
    "cell",
    "portable",
    "handy",
    "telefon",
    "téléphone",
    "telefoon",
    "gsm",
    "call",
    "appel",
    "ruf",
    "numéro de téléphone",
    "whatsapp",
    "sms",
    "hotline",
    "standard",
    "telephone",
    // Short labels of signatures and forms: "T. 962683423", "M: 3408138077", "☎ 971910764".
    "t.",
    "t:",
    "m.",
    "m:",
    "f.",
    "f:",
    "☎",
    "📞",
    "tfno",
    "télécopie",
    "telefax",
    "contact",
    "contatt",
    "kontaktier",
];
/// [`PHONE_WORDS`] and [`REFERENCE_WORDS`] as patterns, searched once per window instead
/// of once per word.
static PHONE_WORDS_RE: LazyLock<Regex> = LazyLock::new(|| words_pattern(&PHONE_WORDS));
static REFERENCE_WORDS_RE: LazyLock<Regex> = LazyLock::new(|| words_pattern(&REFERENCE_WORDS));

fn words_pattern(words: &[&str]) -> Regex {
    let alternatives: Vec<String> = words.iter().map(|w| regex::escape(w)).collect();
    Regex::new(&alternatives.join("|")).expect("word list pattern")
}

/// Words that announce some other number (lower case).
const REFERENCE_WORDS: [&str; 44] = [
    "invoice",
    "facture",
    "rechnung",
    "factuur",
    "order",
    "commande",
    "bestell",
    "auftrag",
    "customer",
    "client",
    "kunde",
    "klant",
    "account",
    "konto",
    "compte",
    "iban",
    "bic",
    "swift",
    "vat",
    "tva",
    "ust",
    "btw",
    "siret",
    "siren",
    "steuer",
    "tax",
    "ref",
    "référence",
    "reference",
    "referenz",
    "serial",
    "serie",
    "ticket",
    "case",
    "mandat",
    "kvk",
    "dossier",
    "vorgang",
    "aktenzeichen",
    "contrat",
    "vertrag",
    "contract",
    "policy",
    "police",
];

pub(super) fn find(text: &str, opts: &DetectOptions, out: &mut Vec<Candidate>) {
    let regions: Vec<country::Id> = opts
        .phone_regions
        .iter()
        .filter_map(|r| country::Id::from_str(&r.to_ascii_uppercase()).ok())
        .collect();
    let mut pos = 0;
    // Inside a run that did not start with a phone number ("Ref 1234 0044 20 …", an
    // invalid IBAN, a social security number) only an international number counts.
    let mut failed_run_end = 0;
    while let Some(m) = RUN.find_at(text, pos) {
        let inside_failed_run = m.start() < failed_run_end;
        let international =
            m.as_str().trim_start_matches('(').starts_with(['+']) || m.as_str().starts_with("00");
        let found = if inside_failed_run && !international {
            None
        } else {
            longest_number_at(text, m.start(), m.end(), &regions)
        };
        match found {
            Some((start, end, score)) => {
                out.push(Candidate {
                    kind: PiiKind::Phone,
                    start,
                    end,
                    score,
                });
                pos = end;
            }
            None => {
                failed_run_end = failed_run_end.max(m.end());
                pos = m.as_str()[1..]
                    .find(|c: char| !c.is_ascii_digit() && c != '+' && c != '(')
                    .map_or(m.end(), |i| m.start() + 1 + i + 1);
                while !text.is_char_boundary(pos) {
                    pos += 1;
                }
            }
        }
    }
}

/// The longest phone number that starts at `start` and ends at a group boundary of the
/// run `start..run_end` ("+44 20 7946 0958 4111 …" is a number followed by another).
fn longest_number_at(
    text: &str,
    start: usize,
    run_end: usize,
    regions: &[country::Id],
) -> Option<(usize, usize, f32)> {
    // "(+33 6 12 34 56 78)": the parenthesis opens around the number, not inside it.
    let start = if text[start..run_end].starts_with('(') && !text[start..run_end].contains(')') {
        start + 1
    } else {
        start
    };
    let run = &text[start..run_end];
    let glued_before = char_before(text, start).is_some_and(|c| {
        c.is_alphanumeric()
            || (matches!(c, '/' | '.' | '-' | '_' | '#' | ',')
                && char_before(text, start - 1).is_some_and(char::is_alphanumeric))
    });
    if glued_before {
        return None;
    }
    let context = context(text, start);
    let bytes = run.as_bytes();
    let mut ends: Vec<usize> = (1..bytes.len())
        .filter(|&i| bytes[i - 1].is_ascii_digit() && !bytes[i].is_ascii_digit())
        .collect();
    ends.push(bytes.len());
    ends.retain(|&end| {
        let end = start + end;
        let after = char_at(text, end);
        let glued_after = after.is_some_and(|c| c.is_alphanumeric() || c == '@')
            || (matches!(after, Some(',' | '.' | '/' | '-' | ':'))
                && char_at(text, end + 1).is_some_and(|c| c.is_ascii_digit()));
        !glued_after
    });
    let score_at = |end: usize| score(&text[start..start + end], context, regions);
    for (i, &end) in ends.iter().enumerate().rev() {
        let Some(found) = score_at(end) else {
            continue;
        };
        // Two numbers side by side ("01 42 68 53 00 06 12 34 56 78"): where numbers have
        // variable lengths (Austria, Italy) the first with digits of the second is valid
        // too; end the first where the rest of the run is a number of its own. Only a
        // long reading can have swallowed digits of another number.
        let digits = text[start..start + end]
            .bytes()
            .filter(u8::is_ascii_digit)
            .count();
        if digits < 12 {
            return Some((start, start + end, found));
        }
        for &first_end in ends[..i].iter().rev() {
            if let Some(first) = score_at(first_end)
                && number_follows(text, start + first_end, regions)
            {
                return Some((start, start + first_end, first));
            }
        }
        return Some((start, start + end, found));
    }
    None
}

/// Whether a number starts at `pos`, after separators: one that reads as a number with
/// no label before it.
fn number_follows(text: &str, pos: usize, regions: &[country::Id]) -> bool {
    let rest = &text[pos..];
    let at = pos + rest.len()
        - rest
            .trim_start_matches([' ', '\u{a0}', '-', '/', '.'])
            .len();
    // A run never crosses a line: look no further than its end.
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let Some(run) = RUN.find(&text[at..line_end]).filter(|m| m.start() == 0) else {
        return false;
    };
    let run = run.as_str();
    let bytes = run.as_bytes();
    (1..=bytes.len())
        .filter(|&i| {
            bytes[i - 1].is_ascii_digit() && bytes.get(i).is_none_or(|b| !b.is_ascii_digit())
        })
        .any(|end| score(&run[..end], Context::None, regions).is_some())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Context {
    Phone,
    Reference,
    None,
}

/// The nearest announcing word on the line before `start`, within 32 bytes and after
/// any other number.
fn context(text: &str, start: usize) -> Context {
    let from = line_start(text, start).max(start.saturating_sub(32));
    let mut from = from;
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let before = text[from..start].to_lowercase();
    // A label speaks for the number right after it, not for one after another number.
    let before = match before.rfind(|c: char| c.is_ascii_digit()) {
        Some(i) => &before[i + 1..],
        None => &before[..],
    };
    // Words count where they start a word: "Bestellnummer" holds "tel", "Brasserie" "serie".
    // Every start at which a word of the list matches, the last one at a word start.
    let last = |words: &Regex| {
        let mut at = 0;
        let mut found = None;
        while let Some(m) = words.find_at(before, at) {
            let i = m.start();
            if !before[..i]
                .chars()
                .next_back()
                .is_some_and(char::is_alphabetic)
            {
                found = Some(i);
            }
            at = i + before[i..].chars().next().map_or(1, char::len_utf8);
        }
        found
    };
    match (last(&PHONE_WORDS_RE), last(&REFERENCE_WORDS_RE)) {
        (Some(p), Some(r)) if r > p => Context::Reference,
        (Some(_), _) => Context::Phone,
        (None, Some(_)) => Context::Reference,
        (None, None) => Context::None,
    }
}

fn score(candidate: &str, context: Context, regions: &[country::Id]) -> Option<f32> {
    let international = candidate.trim_start_matches('(');
    let international = international
        .strip_prefix('+')
        .or_else(|| international.strip_prefix("00"));
    // Digits as dialled: without the `00` and the trunk prefix in "(0)".
    let digits = international
        .map_or(candidate, |rest| rest)
        .replacen("(0)", "", 1)
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    // A reference label does not turn "+44 20 …" into an order number.
    if !(7..=15).contains(&digits)
        || (context == Context::Reference && !candidate.starts_with(['+', '(']))
    {
        return None;
    }
    if DATE_SHAPED.is_match(candidate) || HAS_DATE.is_match(candidate) {
        return None;
    }
    if candidate.matches('(').count() != candidate.matches(')').count() {
        return None;
    }
    let bonus = if context == Context::Phone { 0.1 } else { 0.0 };
    if let Some(rest) = international {
        let number = parse_international(rest)?;
        if phonenumber::is_valid(&number) {
            return Some(0.9 + bonus);
        }
        // A number libphonenumber does not know (a new range, a typo in one digit) is
        // still a number where it is written as one: `+` with the trunk prefix in "(0)"
        // ("+32 (0)4 609 16 08") or after a phone word, with a length the country's numbers
        // can have.
        let written_as_phone = candidate.starts_with(['+', '('])
            && (candidate.contains("(0)") || context == Context::Phone);
        return (written_as_phone && possible_length(&number)).then_some(0.75);
    }
    let first_digit = candidate.chars().find(char::is_ascii_digit)?;
    let nanp_shaped = NANP.is_match(candidate);
    // Written in groups ("347 123 4567"), not one run of digits like a reference number.
    let grouped = candidate.contains(|c: char| !c.is_ascii_digit());
    for &region in regions {
        let shaped = match region {
            country::Id::US | country::Id::CA => nanp_shaped,
            // Where no trunk prefix is dialled (Italian mobiles, all Spanish numbers), a
            // national number starts with any digit: its grouping and length have to say
            // it (nine digits or more; "4111 1111" is a card number's tail).
            _ if !has_trunk_prefix(region) => first_digit == '0' || (grouped && digits >= 9),
            _ => first_digit == '0',
        };
        if !shaped && context != Context::Phone {
            continue;
        }
        if let Some(number) = parse_national(region, candidate)
            && phonenumber::is_valid(&number)
        {
            return Some(if shaped { 0.8 + bonus } else { 0.75 });
        }
    }
    // After a phone label, an international number written without `+` or `00`
    // ("Tel. 49 30 1234567").
    if context == Context::Phone
        && first_digit != '0'
        && let Some(number) = parse_international(candidate)
        && phonenumber::is_valid(&number)
    {
        return Some(0.8);
    }
    None
}

/// Whether the national number of `number` has a length that its country's numbers have.
fn possible_length(number: &phonenumber::PhoneNumber) -> bool {
    let national = number.national().to_string();
    phonenumber::metadata::DATABASE
        .by_code(&number.code().value())
        .is_some_and(|metas| {
            metas.iter().any(|m| {
                let d = m.descriptors();
                [d.fixed_line(), d.mobile()]
                    .into_iter()
                    .flatten()
                    .any(|d| d.possible_length().contains(&(national.len() as u16)))
            })
        })
}

/// `candidate` read as a national number of `region`.
fn parse_national(region: country::Id, candidate: &str) -> Option<phonenumber::PhoneNumber> {
    let number = phonenumber::parse(Some(region), candidate).ok()?;
    if phonenumber::is_valid(&number) || has_trunk_prefix(region) {
        return Some(number);
    }
    // Without a trunk prefix, a national number can start with the country's own code
    // (Italian mobiles "392 …", code 39), which the parser strips as if it were dialled
    // from abroad: read the digits as they are, after the code.
    let code = phonenumber::metadata::DATABASE
        .by_id(region.as_ref())?
        .country_code();
    let digits: String = candidate.chars().filter(char::is_ascii_digit).collect();
    phonenumber::parse(None, format!("+{code}{digits}")).ok()
}

/// Whether national numbers of `region` are dialled with a trunk prefix (the `0` of
/// "030 1234567"), per libphonenumber's metadata.
fn has_trunk_prefix(region: country::Id) -> bool {
    phonenumber::metadata::DATABASE
        .by_id(region.as_ref())
        .is_some_and(|m| m.national_prefix().is_some())
}

/// Parses what follows `+` or `00`, without a trunk prefix in parentheses ("+44 (0) 20 …":
/// the 0 is not dialled from abroad).
fn parse_international(rest: &str) -> Option<phonenumber::PhoneNumber> {
    phonenumber::parse(None, format!("+{}", rest.replacen("(0)", "", 1))).ok()
}

/// The number in E.164 form (`+33612345678`) when it parses, for grouping the same
/// number written two ways under one placeholder.
pub(crate) fn normalize(candidate: &str, regions: &[String]) -> Option<String> {
    let trimmed = candidate.trim_start_matches('(');
    let international = trimmed
        .strip_prefix('+')
        .or_else(|| trimmed.strip_prefix("00"));
    let parsed = match international {
        Some(rest) => parse_international(rest),
        None => regions
            .iter()
            .filter_map(|r| country::Id::from_str(&r.to_ascii_uppercase()).ok())
            .filter_map(|r| parse_national(r, candidate))
            .find(phonenumber::is_valid),
    }?;
    Some(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use crate::{DetectOptions, PiiKind, detect};

    fn phones(text: &str) -> Vec<String> {
        detect(text, &DetectOptions::only(&[PiiKind::Phone]))
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn finds_international_and_national_numbers() {
        assert_eq!(
            phones("Appelez le +33 6 12 34 56 78."),
            ["+33 6 12 34 56 78"]
        );
        assert_eq!(phones("Tél. : 01 42 68 53 00"), ["01 42 68 53 00"]);
        assert_eq!(phones("06.12.34.56.78"), ["06.12.34.56.78"]);
        assert_eq!(phones("Tel. 030 1234567"), ["030 1234567"]);
        assert_eq!(
            phones("Telefon: +49 (0)89 1234 5678"),
            ["+49 (0)89 1234 5678"]
        );
        assert_eq!(phones("0049 30 12345678"), ["0049 30 12345678"]);
        assert_eq!(
            phones("Tel. +49 (0) 711 / 123 456 78"),
            ["+49 (0) 711 / 123 456 78"]
        );
        assert_eq!(phones("Anna (+33 6 12 34 56 78)"), ["+33 6 12 34 56 78"]);
        assert_eq!(phones("+44 (0) 20 7946 0958"), ["+44 (0) 20 7946 0958"]);
        assert_eq!(phones("call (870)-931-0505 now"), ["(870)-931-0505"]);
        assert_eq!(phones("+44 20 7946 0958"), ["+44 20 7946 0958"]);
        assert_eq!(phones("+44 20 7946 0958 4111 1111"), ["+44 20 7946 0958"]);
        assert_eq!(
            phones("2024-06-03 +33 6 12 34 56 78"),
            ["+33 6 12 34 56 78"]
        );
        assert_eq!(phones("Ref 1234 0044 20 7946 0958"), ["0044 20 7946 0958"]);
        assert!(phones("DE85 1860 9139 0996 0308 25, 2 79 04 69 123 456 78").is_empty());
        assert_eq!(
            phones("01 42 68 53 00 06 12 34 56 78"),
            ["01 42 68 53 00", "06 12 34 56 78"]
        );
    }

    #[test]
    fn international_forms_with_trunk_prefix_parentheses_and_no_plus() {
        assert_eq!(
            phones("Mobil: 0049 (0)176 74609122"),
            ["0049 (0)176 74609122"]
        );
        assert_eq!(phones("(+49) 30 1234567"), ["(+49) 30 1234567"]);
        assert_eq!(phones("+49 (341) 9130 1116"), ["+49 (341) 9130 1116"]);
        assert_eq!(phones("+49-172-4845632"), ["+49-172-4845632"]);
        assert_eq!(phones("0033 6 12 34 56 78"), ["0033 6 12 34 56 78"]);
        // Without `+` or `00`, only a phone label says it is a number.
        assert_eq!(phones("Tel. 31 6 10 60 40 38"), ["31 6 10 60 40 38"]);
        assert_eq!(phones("Tel: 49 711 663 0699"), ["49 711 663 0699"]);
        assert!(phones("Lieferung 49 711 663 0699").is_empty());
    }

    #[test]
    fn national_numbers_of_the_default_regions() {
        // Italian and Spanish numbers have no trunk prefix: grouped, nine digits or more.
        assert_eq!(phones("mi chiami al 347 123 4567"), ["347 123 4567"]);
        assert_eq!(phones("richiamarlo al 392-3432590."), ["392-3432590"]);
        assert_eq!(phones("llámeme al 612 34 56 78"), ["612 34 56 78"]);
        assert_eq!(phones("Roma 06 1234 5678"), ["06 1234 5678"]);
        assert_eq!(phones("bel me op 06-12345678"), ["06-12345678"]);
        assert!(phones("pedido 612345678").is_empty());
        assert!(phones("4111 1111").is_empty());
        // A French number followed by another is two numbers, though Austria and Italy
        // would read the first with digits of the second.
        assert_eq!(phones("0221/54 74 07 78"), ["0221/54 74 07 78"]);
    }

    #[test]
    fn skips_dates_amounts_and_reference_numbers() {
        assert!(phones("Rechnungsnummer 30064443").is_empty());
        assert!(phones("INV/2023/03/0008 due 2023-04-04").is_empty());
        assert!(phones("Zeitraum 01.05.14-31.05.14").is_empty());
        assert!(phones("Total 1 234 567,89 EUR").is_empty());
        assert!(phones("Ordernummer: 12572103").is_empty());
        assert!(phones("IBAN NL50INGB0683251309").is_empty());
        assert!(phones("Klantnummer: 6669263").is_empty());
        assert!(phones("version 10.0.19045.2965").is_empty());
        assert!(phones("12572103").is_empty());
        assert!(phones("facture du 02/05/2024 (1 980,00 €)").is_empty());
    }

    #[test]
    fn short_labels_and_numbers_unknown_to_the_metadata() {
        assert_eq!(phones("T. 962683423, Móvil"), ["962683423"]);
        assert_eq!(phones("☎ 971910764"), ["971910764"]);
        assert_eq!(phones("M: 3408138077"), ["3408138077"]);
        assert_eq!(
            phones("Télécopie : +32 (0)4 609 16 08"),
            ["+32 (0)4 609 16 08"]
        );
        assert_eq!(
            phones("vous pouvez la joindre au +33696698555"),
            ["+33696698555"]
        );
        assert_eq!(
            phones("Puede contactar con ella en el 944533182"),
            ["944533182"]
        );
        // Without a label or "(0)", an unknown number is not taken.
        assert!(phones("Ergebnis +33696698555").is_empty());
        assert!(phones("+32 (0)4 609").is_empty());
    }

    #[test]
    fn a_bare_number_counts_only_next_to_a_phone_word() {
        assert!(phones("Ref 612345678").is_empty());
        assert_eq!(phones("mobile: 612345678"), ["612345678"]);
    }
}
