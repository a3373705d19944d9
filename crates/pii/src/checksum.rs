//! Check digits of IBANs (ISO 13616, mod-97) and payment cards (Luhn).

/// Length of an IBAN for a country (ISO 3166 alpha-2, upper case), from the SWIFT IBAN
/// registry; `None` for a country without IBANs.
pub fn iban_length(country: &str) -> Option<usize> {
    let len = match country {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "FO" | "GL" | "NL" | "SD" | "FK" => 18,
        "MK" | "SI" => 19,
        "AT" | "BA" | "EE" | "KZ" | "LT" | "LU" | "XK" | "MN" => 20,
        "CH" | "HR" | "LI" | "LV" => 21,
        "BG" | "BH" | "CR" | "DE" | "GB" | "GE" | "IE" | "ME" | "RS" | "VA" => 22,
        "AE" | "GI" | "IL" | "IQ" | "OM" | "SO" | "TL" => 23,
        "AD" | "CZ" | "ES" | "MD" | "PK" | "RO" | "SA" | "SE" | "SK" | "TN" | "VG" => 24,
        "LY" | "PT" | "ST" => 25,
        "IS" | "TR" => 26,
        "BI" | "DJ" | "FR" | "GR" | "IT" | "MC" | "MR" | "SM" => 27,
        "AL" | "AZ" | "BY" | "CY" | "DO" | "GT" | "HU" | "LB" | "NI" | "PL" | "SV" => 28,
        "BR" | "EG" | "PS" | "QA" | "UA" => 29,
        "JO" | "KW" | "MU" | "YE" => 30,
        "MT" | "SC" => 31,
        "LC" => 32,
        "RU" => 33,
        _ => return None,
    };
    Some(len)
}

/// Whether `iban` (spaces allowed, letters in either case) has its country's length and a
/// correct mod-97 check: the number formed by moving the first four characters to the end
/// and spelling letters as 10..35 leaves remainder 1.
pub fn iban_is_valid(iban: &str) -> bool {
    let compact: Vec<u8> = iban
        .bytes()
        .filter(|b| *b != b' ')
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if compact.len() < 5 || !compact.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let country = std::str::from_utf8(&compact[..2]).unwrap_or("");
    if iban_length(country) != Some(compact.len()) || !compact[2..4].iter().all(u8::is_ascii_digit)
    {
        return false;
    }
    let mut remainder: u32 = 0;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        if b.is_ascii_digit() {
            remainder = (remainder * 10 + u32::from(b - b'0')) % 97;
        } else {
            remainder = (remainder * 100 + u32::from(b - b'A' + 10)) % 97;
        }
    }
    remainder == 1
}

/// Whether a string of ASCII digits passes the Luhn check; any other character fails it.
pub fn luhn_is_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iban_examples_from_national_banks_validate() {
        for iban in [
            "DE89 3704 0044 0532 0130 00",
            "FR14 2004 1010 0505 0001 3M02 606",
            "GB29 NWBK 6016 1331 9268 19",
            "NL91 ABNA 0417 1643 00",
            "BE68 5390 0754 7034",
            "CH93 0076 2011 6238 5295 7",
            "AT61 1904 3002 3457 3201",
            "ES91 2100 0418 4502 0005 1332",
            "IT60 X054 2811 1010 0000 0123 456",
            "NO93 8601 1117 947",
            "MT84 MALT 0110 0001 2345 MTLC AST0 01S",
            "fr1420041010050500013m02606",
        ] {
            assert!(iban_is_valid(iban), "{iban}");
        }
    }

    #[test]
    fn iban_with_one_changed_digit_or_wrong_length_fails() {
        let good = "DE89370400440532013000";
        assert!(iban_is_valid(good));
        for i in 4..good.len() {
            let mut bytes = good.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'9' { b'0' } else { bytes[i] + 1 };
            assert!(
                !iban_is_valid(std::str::from_utf8(&bytes).unwrap()),
                "digit {i}"
            );
        }
        // Swapping two neighbours is caught by mod-97 as well.
        assert!(!iban_is_valid("DE89370400440532031000"));
        assert!(!iban_is_valid("DE8937040044053201300"));
        assert!(!iban_is_valid("DE893704004405320130000"));
        assert!(!iban_is_valid("US1234567890"));
        assert!(!iban_is_valid("XX89370400440532013000"));
        assert!(!iban_is_valid("DE8937040044053201300!"));
        assert!(!iban_is_valid(""));
    }

    #[test]
    fn luhn_accepts_test_cards_and_rejects_any_single_digit_change() {
        for card in [
            "4111111111111111",
            "5555555555554444",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "4012888888881881",
            "5105105105105100",
            "79927398713",
        ] {
            assert!(luhn_is_valid(card), "{card}");
            for i in 0..card.len() {
                let mut bytes = card.as_bytes().to_vec();
                bytes[i] = if bytes[i] == b'9' { b'0' } else { bytes[i] + 1 };
                assert!(
                    !luhn_is_valid(std::str::from_utf8(&bytes).unwrap()),
                    "{card} digit {i}"
                );
            }
        }
        assert!(!luhn_is_valid("4111 1111 1111 1111"));
        assert!(!luhn_is_valid(""));
    }
}
