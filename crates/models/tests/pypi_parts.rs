//! `pypi-parts:` pulls through the real pip, served from a folder of wheels built here
//! (`--no-index --find-links DIR`): never PyPI. Needs `python3 -m pip`, as every pull from
//! PyPI does.

mod common;

use std::io::Write;
use std::path::Path;

use common::{sha256_hex, tiny_gguf};
use verre_models::{FetchConfig, ModelFormat, ModelStore, PullOptions};
use zip::write::SimpleFileOptions;

/// Writes `name-version` as a wheel with one slice at `module/data/partNN.bin`, laid out as
/// the Qwen part packages are.
fn write_part_wheel(dir: &Path, name: &str, version: &str, number: usize, slice: &[u8]) {
    let module = name.replace('-', "_");
    let path = dir.join(format!("{module}-{version}-py3-none-any.whl"));
    let mut writer = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let dist_info = format!("{module}-{version}.dist-info");
    let entries: [(String, Vec<u8>); 4] = [
        (format!("{module}/__init__.py"), Vec::new()),
        (format!("{module}/data/part{number:02}.bin"), slice.to_vec()),
        (
            format!("{dist_info}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n").into_bytes(),
        ),
        (
            format!("{dist_info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: verre-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_vec(),
        ),
    ];
    for (entry, bytes) in entries {
        writer.start_file(entry, options).unwrap();
        writer.write_all(&bytes).unwrap();
    }
    writer.finish().unwrap();
}

/// A GGUF cut into `count` slices, one wheel each, `tiny-model-part1..count` version 1.0.
fn split_model(wheels: &Path, count: usize) -> Vec<u8> {
    let gguf = tiny_gguf();
    let slice_len = gguf.len().div_ceil(count);
    for (index, slice) in gguf.chunks(slice_len).enumerate() {
        let number = index + 1;
        write_part_wheel(
            wheels,
            &format!("tiny-model-part{number}"),
            "1.0",
            number,
            slice,
        );
    }
    assert_eq!(gguf.chunks(slice_len).count(), count);
    gguf
}

fn store_serving(wheels: &Path, python: &str) -> (tempfile::TempDir, ModelStore) {
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::open(home.path())
        .unwrap()
        .with_fetch_config(FetchConfig {
            hf_endpoint: "http://127.0.0.1:9".into(),
            python: python.into(),
            pip_args: vec![
                "--no-index".into(),
                "--find-links".into(),
                wheels.display().to_string(),
            ],
            ..FetchConfig::default()
        });
    (home, store)
}

/// Everything in `models/`, hidden entries included.
fn store_contents(store: &ModelStore) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.models_dir())
        .unwrap()
        .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const SPEC: &str = "pypi-parts:tiny-model-part{1..3}==1.0";

#[test]
fn joins_a_model_split_over_three_packages() {
    let wheels = tempfile::tempdir().unwrap();
    let gguf = split_model(wheels.path(), 3);
    let (_home, store) = store_serving(wheels.path(), "python3");

    let entry = store.pull(SPEC, &PullOptions::default()).unwrap();
    assert_eq!(entry.error, None);
    assert_eq!(entry.name, "tiny-model");
    assert_eq!(entry.source, SPEC);
    assert_eq!(entry.format, ModelFormat::Gguf);
    assert_eq!(entry.architecture, "llama");
    assert_eq!(entry.size_bytes, gguf.len() as u64);
    assert_eq!(entry.sha256, Some(sha256_hex(&gguf)));
    assert!(entry.path.ends_with("tiny-model/tiny-model.gguf"));
    assert_eq!(std::fs::read(&entry.path).unwrap(), gguf);
    assert_eq!(store.resolve("tiny-model").unwrap(), entry);
    // No wheel, no pip temp file, no staging directory left: only the model.
    assert_eq!(store_contents(&store), ["tiny-model"]);
    let model_dir: Vec<_> = std::fs::read_dir(store.models_dir().join("tiny-model"))
        .unwrap()
        .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(model_dir.len(), 2, "{model_dir:?}");

    // Pulled again from the same source: the stored model, nothing fetched.
    std::fs::remove_dir_all(wheels.path()).unwrap();
    let again = store.pull(SPEC, &PullOptions::default()).unwrap();
    assert_eq!(again, entry);
}

#[test]
fn a_missing_part_names_it_and_leaves_nothing() {
    let wheels = tempfile::tempdir().unwrap();
    split_model(wheels.path(), 3);
    std::fs::remove_file(wheels.path().join("tiny_model_part2-1.0-py3-none-any.whl")).unwrap();
    let (_home, store) = store_serving(wheels.path(), "python3");

    let err = format!(
        "{:#}",
        store.pull(SPEC, &PullOptions::default()).unwrap_err()
    );
    assert!(
        err.contains("part 2/3 (tiny-model-part2==1.0)")
            && err.contains("No matching distribution found for tiny-model-part2==1.0"),
        "{err}"
    );
    assert!(
        store_contents(&store).is_empty(),
        "{:?}",
        store_contents(&store)
    );
}

#[test]
fn a_part_from_another_release_is_not_picked_up() {
    let wheels = tempfile::tempdir().unwrap();
    split_model(wheels.path(), 3);
    let (_home, store) = store_serving(wheels.path(), "python3");
    let err = format!(
        "{:#}",
        store
            .pull(
                "pypi-parts:tiny-model-part{1..3}==2.0",
                &PullOptions::default()
            )
            .unwrap_err()
    );
    assert!(err.contains("part 1/3 (tiny-model-part1==2.0)"), "{err}");
}

#[test]
fn joined_bytes_that_are_not_a_model_are_refused() {
    let wheels = tempfile::tempdir().unwrap();
    for number in 1..=2 {
        write_part_wheel(
            wheels.path(),
            &format!("junk-part{number}"),
            "1.0",
            number,
            b"not a gguf",
        );
    }
    let (_home, store) = store_serving(wheels.path(), "python3");
    let err = format!(
        "{:#}",
        store
            .pull("pypi-parts:junk-part{1..2}==1.0", &PullOptions::default())
            .unwrap_err()
    );
    assert!(err.contains("not a model verre can load"), "{err}");
    assert!(
        store_contents(&store).is_empty(),
        "{:?}",
        store_contents(&store)
    );
}

#[test]
fn a_missing_python_or_pip_is_a_clear_error() {
    let wheels = tempfile::tempdir().unwrap();
    split_model(wheels.path(), 3);
    let (_home, store) = store_serving(wheels.path(), "/nonexistent/python3");
    let err = format!(
        "{:#}",
        store.pull(SPEC, &PullOptions::default()).unwrap_err()
    );
    assert!(
        err.contains("part 1/3") && err.contains("/nonexistent/python3 was not found"),
        "{err}"
    );

    // A Python without pip, as Debian's python3 is before python3-pip.
    let bin = tempfile::tempdir().unwrap();
    let python = bin.path().join("python3");
    std::fs::write(
        &python,
        "#!/bin/sh\necho '/usr/bin/python3: No module named pip' >&2\nexit 1\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (_home, store) = store_serving(wheels.path(), python.to_str().unwrap());
    let err = format!(
        "{:#}",
        store.pull(SPEC, &PullOptions::default()).unwrap_err()
    );
    assert!(
        err.contains("needs pip") && err.contains("apt-get install python3-pip"),
        "{err}"
    );
    assert!(store_contents(&store).is_empty());
}
