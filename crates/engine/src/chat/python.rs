//! Python's spelling of values, where Hugging Face's Jinja (Python) and minijinja disagree:
//! - `tojson` as transformers defines it (`json.dumps`: `", "` and `": "` separators, keys
//!   in insertion order, no HTML escaping, `ensure_ascii`, `indent`, `separators`,
//!   `sort_keys`);
//! - printing a value (`{{ x }}`, `x|string`) as Python's `str()` does: `None`, `True`,
//!   `{'city': 'Paris'}`, `[1, 2.0]`;
//! - `is iterable`: none is not.

use std::fmt::Write;

use minijinja::value::{Kwargs, Rest};
use minijinja::{Error, ErrorKind, Output, State, Value, value::ValueKind};

/// The environment's formatter: `{{ x }}` writes Python's `str(x)`.
pub fn format(out: &mut Output, _state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        // Strings (safe or not; there is no autoescaping) and undefined (nothing) as
        // minijinja writes them.
        ValueKind::String | ValueKind::Undefined => write!(out, "{value}"),
        _ => out.write_str(&str_of(value)),
    }
    .map_err(|_| Error::new(ErrorKind::WriteFailure, "writing the rendered template"))
}

/// The `string` filter: Python's `str()`.
pub fn string_filter(value: &Value) -> Value {
    match value.kind() {
        ValueKind::String => value.clone(),
        ValueKind::Undefined => Value::from(""),
        _ => Value::from(str_of(value)),
    }
}

/// The `iterable` test: strings, sequences and mappings are; none, numbers and booleans
/// are not (minijinja counts none as an empty sequence).
pub fn is_iterable(value: &Value) -> bool {
    match value.kind() {
        ValueKind::None | ValueKind::Undefined | ValueKind::Bool | ValueKind::Number => false,
        _ => value.try_iter().is_ok(),
    }
}

/// Python's `str(value)`: a string as itself, anything else by `repr`.
pub fn str_of(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or("").to_string(),
        _ => {
            let mut out = String::new();
            repr(value, &mut out);
            out
        }
    }
}

/// Python's `repr(value)`.
fn repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::None => out.push_str("None"),
        ValueKind::Undefined => {}
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) if f.is_nan() => out.push_str("nan"),
            Ok(f) if f.is_infinite() => out.push_str(if f > 0.0 { "inf" } else { "-inf" }),
            Ok(f) => out.push_str(&float_repr(f)),
            Err(_) => out.push_str(&value.to_string()),
        },
        ValueKind::String => string_repr(value.as_str().unwrap_or(""), out),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr(&item, out);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr(&key, out);
                out.push_str(": ");
                repr(&value.get_item(&key).unwrap_or_default(), out);
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
}

/// Python's `repr` of a string: single quotes unless the text holds a single quote and no
/// double one; backslash escapes for the characters Python does not print as they are
/// (control characters and the usual invisible separators and format characters).
fn string_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = c as u32;
                let _ = match n {
                    0..=0xff => write!(out, "\\x{n:02x}"),
                    0x100..=0xffff => write!(out, "\\u{n:04x}"),
                    _ => write!(out, "\\U{n:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable`, for the characters that text in a prompt plausibly holds:
/// control characters, non-ASCII spaces, line and paragraph separators and the common
/// format characters are not printable.
fn is_printable(c: char) -> bool {
    !matches!(c as u32,
        0..=0x1f | 0x7f..=0xa0 | 0xad | 0x1680 | 0x2000..=0x200f | 0x2028..=0x202f
        | 0x205f..=0x2064 | 0x3000 | 0xfeff | 0xd800..=0xdfff | 0xe000..=0xf8ff)
}

/// `json.dumps` options, as transformers' `tojson(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)` takes them.
struct Options {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

/// The largest text `tojson` makes: each call escapes the quotes of a string it is given,
/// so a chain of them doubles a value each time (fuel counts filters, not bytes).
pub const MAX_TOJSON_BYTES: usize = 4 << 20;
/// The widest `indent` `tojson` accepts.
const MAX_TOJSON_INDENT: usize = 64;

/// The `tojson` filter: positional arguments in transformers' order, or keywords.
pub fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(invalid("tojson takes at most 4 arguments"));
    }
    let mut given: [Option<Value>; 4] = Default::default();
    for (slot, arg) in given.iter_mut().zip(args.iter()) {
        *slot = Some(arg.clone());
    }
    for (slot, name) in given.iter_mut().zip(NAMES) {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            if slot.is_some() {
                return Err(invalid(&format!("tojson got `{name}` twice")));
            }
            *slot = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = given;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or("").to_string()),
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.clamp(0, MAX_TOJSON_INDENT as i64 + 1) as usize)),
            None => return Err(invalid("tojson: indent must be an integer or a string")),
        },
    };
    if indent.as_ref().is_some_and(|i| i.len() > MAX_TOJSON_INDENT) {
        return Err(invalid(&format!(
            "tojson: an indent wider than {MAX_TOJSON_INDENT}"
        )));
    }
    let (item_separator, key_separator) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] => (item.to_string(), key.to_string()),
                _ => return Err(invalid("tojson: separators must be a pair")),
            }
        }
        // Python's defaults: no space at line ends when indenting.
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let options = Options {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_separator,
        key_separator,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    dump(value, &options, 0, &mut out)?;
    check_size(&out)?;
    Ok(Value::from(out))
}

fn invalid(message: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.to_string())
}

fn too_large() -> Error {
    invalid(&format!(
        "tojson: the text would be over the {MAX_TOJSON_BYTES}-byte limit"
    ))
}

fn check_size(out: &str) -> Result<(), Error> {
    if out.len() > MAX_TOJSON_BYTES {
        return Err(too_large());
    }
    Ok(())
}

fn bounded(items: impl Iterator<Item = Value>) -> Result<Vec<Value>, Error> {
    let items: Vec<Value> = items.take(MAX_TOJSON_BYTES / 2 + 1).collect();
    if items.len() > MAX_TOJSON_BYTES / 2 {
        return Err(too_large());
    }
    Ok(items)
}

fn dump(value: &Value, o: &Options, level: usize, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&number(value)),
        ValueKind::String => string(value.as_str().unwrap_or(""), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            // A repeated sequence (`messages * 999999999`) is lazy: take no more items than
            // the output could hold (each is at least two bytes).
            let items = bounded(value.try_iter()?)?;
            container(out, o, level, '[', ']', &items, |item, out| {
                check_size(out)?;
                dump(item, o, level + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut keys = bounded(value.try_iter()?)?;
            if o.sort_keys {
                keys.sort();
            }
            container(out, o, level, '{', '}', &keys, |key, out| {
                check_size(out)?;
                string(&key_text(key)?, o.ensure_ascii, out);
                out.push_str(&o.key_separator);
                dump(&value.get_item(key)?, o, level + 1, out)
            })?;
        }
        kind => {
            return Err(invalid(&format!(
                "Object of type {kind} is not JSON serializable"
            )));
        }
    }
    Ok(())
}

/// `[...]` or `{...}`, one item per line when indenting, as `json.dumps` lays them out.
fn container<T>(
    out: &mut String,
    o: &Options,
    level: usize,
    open: char,
    close: char,
    items: &[T],
    mut item: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&o.item_separator);
        }
        if let Some(indent) = &o.indent {
            out.push('\n');
            out.push_str(&indent.repeat(level + 1));
        }
        item(it, out)?;
    }
    if let Some(indent) = &o.indent {
        out.push('\n');
        out.push_str(&indent.repeat(level));
    }
    out.push(close);
    Ok(())
}

/// Python turns non-string keys into strings: numbers as written, booleans and None as JSON.
fn key_text(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or("").to_string(),
        ValueKind::Number => number(key),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_string(),
        ValueKind::None => "null".to_string(),
        kind => {
            return Err(invalid(&format!(
                "keys must be str, int, float, bool or None, not {kind}"
            )));
        }
    })
}

/// A number as Python writes it: integers as they are, floats by `repr` (`1.0`,
/// `1e+16`, `1e-05`, `NaN`, `Infinity`).
pub fn number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) => float_repr(f),
        Err(_) => value.to_string(),
    }
}

pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:?}` is the shortest round-trip form and switches to an exponent at the same
    // magnitudes as Python's repr (below 1e-4, from 1e16); only the exponent is spelled
    // differently (`1e16` against `1e+16`, `1e-5` against `1e-05`).
    let debug = format!("{f:?}");
    match debug.split_once('e') {
        None => debug,
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
    }
}

/// A JSON string as Python's encoder writes it.
fn string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_as_python_writes_them() {
        for (f, want) in [
            (1.0, "1.0"),
            (21.5, "21.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-2.5e-300, "-2.5e-300"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            assert_eq!(float_repr(f), want);
        }
    }
}
