//! Every file of `operator/tests/bad/` is refused by `enclave plan` with
//! exit code 2, naming the file and the field (its `# expect:` lines), and
//! hostile input fails fast with a clear message.

use std::{fmt::Write as _, path::Path};

use crate::support::{enclave, root};

fn plan(path: &Path) -> (i32, String, String) {
    let out = enclave().args(["plan", "-f"]).arg(path).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn every_bad_resource_is_refused_naming_its_field() {
    let dir = root().join("operator/tests/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 40, "the corpus shrank");
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no # expect: line",
            file.display()
        );
        let (code, stdout, stderr) = plan(file);
        let name = file.file_name().unwrap().to_string_lossy();
        if code != 2
            || !stdout.is_empty()
            || !stderr.contains(name.as_ref())
            || !expects.iter().all(|e| stderr.contains(e))
        {
            failures.push(format!(
                "{name}: exit {code}, expected {expects:?}, got:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn one_bad_document_means_no_partial_plan() {
    let dir = tempdir();
    std::fs::copy(root().join("examples/acme.yaml"), dir.join("a.yaml")).unwrap();
    std::fs::copy(
        root().join("operator/tests/bad/12-egress-not-a-cidr.yaml"),
        dir.join("b.yaml"),
    )
    .unwrap();
    let (code, stdout, stderr) = plan(&dir);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("b.yaml: document 1: spec.network.egress[0].cidr"),
        "{stderr}"
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "enclave-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn write(name: &str, content: &[u8]) -> std::path::PathBuf {
    let path = tempdir().join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn hostile_input_fails_fast_with_a_clear_message() {
    let mut laughs = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..=9 {
        let prev = (b'a' + i - 1) as char;
        let this = (b'a' + i) as char;
        let _ = writeln!(
            laughs,
            "{this}: &{this} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]"
        );
    }
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("laughs.yaml", laughs.into_bytes(), "not valid YAML"),
        ("deep.yaml", deep.into_bytes(), "not valid YAML"),
        (
            "garbage.yaml",
            vec![0xff, 0xfe, 0x00, 0x13, 0x37, 0x80],
            "not UTF-8",
        ),
        ("nul.yaml", b"kind: Company\x00\n".to_vec(), "NUL"),
        (
            "scalar.yaml",
            b"just a string\n".to_vec(),
            "expected a Kubernetes object",
        ),
        (
            "unknown.yaml",
            b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n".to_vec(),
            "unknown kind",
        ),
    ];
    for (name, content, expect) in cases {
        let (code, stdout, stderr) = plan(&write(name, &content));
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(stdout.is_empty(), "{name}");
        assert!(
            stderr.contains(expect),
            "{name}: expected {expect:?} in {stderr}"
        );
    }
    // Larger than any tenant repository: refused before it is read (sparse, so cheap to write).
    let huge = tempdir().join("huge.yaml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(65 * 1024 * 1024)
        .unwrap();
    let (code, stdout, stderr) = plan(&huge);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("the limit is"), "{stderr}");

    let (code, _, stderr) = plan(Path::new("/nonexistent/tenants.yaml"));
    assert_eq!(code, 2);
    assert!(stderr.contains("no such file"), "{stderr}");
}
