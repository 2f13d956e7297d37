//! `enclave storage-prep` as root against a real directory tree: owner and
//! mode, another uid locked out (checked by running as that uid), symlinks
//! at every level refused, removal per policy.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::enclave;

const ALICE: u32 = 40_001;
const BOB: u32 = 40_002;

/// A fresh company root (storage-prep must chown: root only).
fn root_dir(name: &str) -> PathBuf {
    crate::harness::require_root();
    let base = std::env::temp_dir().join(format!("enclave-prep-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("company-root");
    std::fs::create_dir_all(&root).unwrap();
    // Let other uids traverse down to the company root, as on a real mount.
    for dir in [&base, &root] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

fn prep(root: &Path, path: &str, uid: u32, action: &str) -> (i32, String) {
    let out = enclave()
        .args(["storage-prep", "--root"])
        .arg(root)
        .args([
            "--path",
            path,
            "--uid",
            &uid.to_string(),
            "--gid",
            &uid.to_string(),
            "--action",
            action,
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `ls` on `dir` as `uid`.
fn can_list_as(uid: u32, dir: &Path) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
            "ls",
        ])
        .arg(dir)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn creates_a_private_directory_only_its_owner_can_open() {
    let root = root_dir("create");
    let (code, text) = prep(&root, "developers/alice-1a2b3c4d", ALICE, "create");
    assert_eq!(code, 0, "{text}");
    let dir = root.join("developers/alice-1a2b3c4d");
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (ALICE, ALICE, 0o700)
    );
    let parent = std::fs::metadata(root.join("developers")).unwrap();
    assert_eq!(
        (parent.uid(), parent.mode() & 0o7777),
        (0, 0o711),
        "developers/ is traversable, not listable"
    );
    assert!(can_list_as(ALICE, &dir), "the owner can list it");
    assert!(!can_list_as(BOB, &dir), "another developer's uid cannot");
    assert!(
        !can_list_as(BOB, &root.join("developers")),
        "nor list who else has a directory"
    );

    // Again: nothing to do. For another uid: refused, untouched.
    let (code, text) = prep(&root, "developers/alice-1a2b3c4d", ALICE, "create");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("checked"), "{text}");
    let (code, text) = prep(&root, "developers/alice-1a2b3c4d", BOB, "create");
    assert_eq!(code, 2, "{text}");
    assert_eq!(std::fs::metadata(&dir).unwrap().uid(), ALICE);
}

#[test]
fn symlinks_at_any_level_are_refused_and_their_targets_untouched() {
    let root = root_dir("symlink");
    let outside = root.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "not yours").unwrap();
    let before = std::fs::metadata(&outside).unwrap();

    // developers -> outside
    symlink(&outside, root.join("developers")).unwrap();
    let (code, text) = prep(&root, "developers/alice-1a2b3c4d", ALICE, "create");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("symlink"), "{text}");
    assert!(
        !outside.join("alice-1a2b3c4d").exists(),
        "nothing was created through the link"
    );

    // developers/alice-... -> outside
    std::fs::remove_file(root.join("developers")).unwrap();
    std::fs::create_dir(root.join("developers")).unwrap();
    symlink(&outside, root.join("developers/alice-1a2b3c4d")).unwrap();
    for action in ["create", "archive", "delete"] {
        let (code, text) = prep(&root, "developers/alice-1a2b3c4d", ALICE, action);
        assert_eq!(code, 2, "{action}: {text}");
    }
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!(
        (after.uid(), after.mode()),
        (before.uid(), before.mode()),
        "the target was not chowned or chmodded"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "not yours"
    );

    for path in [
        "../outside/x",
        "/etc/passwd",
        "developers/../../x",
        "developers",
        "Developers/a",
        "developers/a b",
    ] {
        let (code, text) = prep(&root, path, ALICE, "create");
        assert_eq!(code, 2, "{path}: {text}");
    }
}

#[test]
fn removal_follows_the_deletion_policy_without_following_links() {
    let root = root_dir("remove");
    let outside = root.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), "keep me").unwrap();
    for key in ["alice-1", "bob-2"] {
        let uid = if key == "alice-1" { ALICE } else { BOB };
        assert_eq!(
            prep(&root, &format!("developers/{key}"), uid, "create").0,
            0
        );
        let dir = root.join("developers").join(key);
        std::fs::create_dir_all(dir.join("project/src")).unwrap();
        std::fs::write(dir.join("project/src/main.py"), "print(1)").unwrap();
        symlink(&outside, dir.join("project/link")).unwrap();
    }

    let (code, text) = prep(&root, "developers/alice-1", ALICE, "archive");
    assert_eq!(code, 0, "{text}");
    assert!(!root.join("developers/alice-1").exists());
    let archived: Vec<_> = std::fs::read_dir(root.join("developers/archived"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(archived.len(), 1);
    assert_eq!(
        std::fs::read_to_string(archived[0].join("project/src/main.py")).unwrap(),
        "print(1)"
    );

    let (code, text) = prep(&root, "developers/bob-2", BOB, "delete");
    assert_eq!(code, 0, "{text}");
    assert!(!root.join("developers/bob-2").exists());
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "keep me",
        "the link's target survived"
    );
    // Deleting what is gone is fine (a retried Job).
    assert_eq!(prep(&root, "developers/bob-2", BOB, "delete").0, 0);
}

#[test]
fn a_tree_too_deep_to_remove_is_refused_and_kept_whole() {
    let root = root_dir("deep");
    assert_eq!(prep(&root, "developers/carl-3", ALICE, "create").0, 0);
    let mut deepest = root.join("developers/carl-3");
    for _ in 0..=enclave::storage_prep::MAX_DEPTH {
        deepest.push("d");
    }
    std::fs::create_dir_all(&deepest).unwrap();
    std::fs::write(deepest.join("bottom.txt"), "still here").unwrap();

    let (code, text) = prep(&root, "developers/carl-3", ALICE, "delete");
    assert_eq!(code, 2, "refused for an administrator: {text}");
    assert!(text.contains("deeper than"), "{text}");
    assert_eq!(
        std::fs::read_to_string(deepest.join("bottom.txt")).unwrap(),
        "still here",
        "nothing below the limit was touched"
    );
}
