//! Reading tenant files: multi-document YAML (or JSON) from files and
//! directories, with hard limits so hostile input fails fast.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Problem;

/// Largest file read.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most documents across all inputs.
const MAX_DOCUMENTS: usize = 10_000;

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
fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<Problem>> {
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

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_aliases: 256,
            max_anchors: 256,
            max_depth: 64,
            max_documents: MAX_DOCUMENTS,
            max_nodes: 200_000,
        },
    }
}

/// Parses one file's text into documents.
fn parse(source: &Path, text: &str) -> Result<Vec<Document>, Problem> {
    let values: Vec<Value> = serde_saphyr::from_multiple_with_options(text, yaml_options())
        .map_err(|e| {
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

/// Reads every document of `paths`.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Document>, Vec<Problem>> {
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    for file in files(paths)? {
        let size = std::fs::metadata(&file).map_or(0, |m| m.len());
        if size > MAX_FILE_BYTES {
            problems.push(Problem::file(
                &file,
                format!("file is {size} bytes; the limit is {MAX_FILE_BYTES}"),
            ));
            continue;
        }
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) => {
                problems.push(Problem::file(&file, format!("cannot read: {e}")));
                continue;
            }
        };
        let Ok(text) = String::from_utf8(bytes) else {
            problems.push(Problem::file(
                &file,
                "not UTF-8 text: expected YAML or JSON manifests",
            ));
            continue;
        };
        if text.contains('\0') {
            problems.push(Problem::file(
                &file,
                "contains NUL bytes: expected YAML or JSON manifests",
            ));
            continue;
        }
        match parse(&file, &text) {
            Ok(docs) => documents.extend(docs),
            Err(problem) => problems.push(problem),
        }
        if documents.len() > MAX_DOCUMENTS {
            problems.push(Problem::file(
                &file,
                format!("more than {MAX_DOCUMENTS} documents in total"),
            ));
            break;
        }
    }
    if problems.is_empty() {
        Ok(documents)
    } else {
        Err(problems)
    }
}
