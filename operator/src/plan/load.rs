//! Reading tenant files: multi-document YAML (or JSON) from files and
//! directories, with hard limits so hostile input fails fast.
//!
//! The limits are on bytes and on what the bytes may expand to, not on how
//! many documents a repository holds: parser events (aliases replayed
//! included) are bounded by the file's size, nesting by a fixed depth.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Problem;

/// Largest file read.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Most bytes across all inputs: 1,000 companies of 10 developers are
/// about 2 MiB.
const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
/// Deepest nesting; a Company is about 6 levels deep.
const MAX_DEPTH: usize = 64;
/// Parser events allowed per input byte, alias replays included: plain
/// YAML needs well under one, so only alias expansion comes near it.
const EVENTS_PER_BYTE: usize = 1;
/// Events allowed for any file, however small.
const MIN_EVENTS: usize = 100_000;

/// What has been read so far, against [`MAX_TOTAL_BYTES`].
#[derive(Default)]
pub struct Budget {
    bytes: u64,
}

/// One YAML document of one file.
#[derive(Clone, Debug)]
pub struct Document {
    /// The file.
    pub source: String,
    /// 1-based position of the document in its file.
    pub index: usize,
    /// Its content.
    pub value: Value,
}

/// Files named by `paths`: files as given, directories' `.yaml`, `.yml`
/// and `.json` files (not recursive, like `kubectl apply -f`), sorted.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<Problem>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            p.is_file()
                                && p.extension()
                                    .and_then(|e| e.to_str())
                                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                        })
                        .collect();
                    found.sort();
                    out.extend(found);
                }
                Err(e) => problems.push(Problem::file(path, format!("cannot read directory: {e}"))),
            }
        } else if path.exists() {
            out.push(path.clone());
        } else {
            problems.push(Problem::file(path, "no such file or directory"));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn yaml_options(bytes: usize) -> serde_saphyr::Options {
    let events = bytes.saturating_mul(EVENTS_PER_BYTE).max(MIN_EVENTS);
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: events,
            max_nodes: events,
            max_documents: events,
            max_aliases: 256,
            max_anchors: 256,
            max_recorded_anchor_events: MIN_EVENTS,
            max_depth: MAX_DEPTH,
        },
    }
}

/// Parses one file's text into documents.
fn parse(source: &Path, text: &str) -> Result<Vec<Document>, Problem> {
    let values: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, yaml_options(text.len())).map_err(|e| {
            Problem::file(
                source,
                format!("not valid YAML: {}", first_line(&e.to_string())),
            )
        })?;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| Document {
            source: source.display().to_string(),
            index: i + 1,
            value,
        })
        .collect())
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

/// Reads every document of one file.
pub fn read(file: &Path, budget: &mut Budget) -> Result<Vec<Document>, Problem> {
    let size = std::fs::metadata(file).map_or(0, |m| m.len());
    if size > MAX_FILE_BYTES {
        return Err(Problem::file(
            file,
            format!("file is {size} bytes; the limit is {MAX_FILE_BYTES}"),
        ));
    }
    budget.bytes += size;
    if budget.bytes > MAX_TOTAL_BYTES {
        return Err(Problem::file(
            file,
            format!(
                "the inputs are more than {MAX_TOTAL_BYTES} bytes in total: plan them in parts"
            ),
        ));
    }
    let bytes =
        std::fs::read(file).map_err(|e| Problem::file(file, format!("cannot read: {e}")))?;
    let Ok(text) = String::from_utf8(bytes) else {
        return Err(Problem::file(
            file,
            "not UTF-8 text: expected YAML or JSON manifests",
        ));
    };
    if text.contains('\0') {
        return Err(Problem::file(
            file,
            "contains NUL bytes: expected YAML or JSON manifests",
        ));
    }
    parse(file, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_bounded_by_bytes_not_counted() {
        let text = "{kind: Developer}\n---\n".repeat(30_000);
        let docs = parse(Path::new("many.yaml"), &text).unwrap();
        assert_eq!(docs.len(), 30_000);
        assert_eq!(docs[29_999].index, 30_000);
    }

    #[test]
    fn aliases_expand_only_as_far_as_the_file_is_long() {
        // 10 levels of 4 aliases each: 4^10 ≈ 1 million nodes from 300 bytes.
        let text: String = std::iter::once("a0: &a0 [x, x, x, x]\n".to_owned())
            .chain((1..10).map(|i| {
                let p = i - 1;
                format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}]\n")
            }))
            .collect();
        let problem = parse(Path::new("bomb.yaml"), &text).unwrap_err();
        assert!(problem.message.starts_with("not valid YAML"), "{problem}");
    }
}
