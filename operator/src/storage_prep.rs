//! `enclave storage-prep`: creates, archives or removes one developer's
//! directory below a company root, inside the storage-prep Job.
//!
//! Every step works on directory file descriptors opened with `O_NOFOLLOW`
//! (`openat`, `mkdirat`, `fchown`, `fchmod`, `unlinkat`), never on path
//! strings after the root, so a symlink planted at any level — by a tenant
//! or anyone — is refused instead of followed.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use rustix::{
    fs::{
        AtFlags, Dir, FileType, Gid, Mode, OFlags, Uid, fchmod, fchown, fstat, mkdirat, openat,
        renameat, statat, unlinkat,
    },
    io::Errno,
};
use thiserror::Error;

/// Mode of the directories Enclave creates above a developer's own
/// (`developers/`, `archived/`): traversable, not listable.
pub const PARENT_MODE: u32 = 0o711;

/// What to do with the developer's directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Create it (or check it) owned by the developer, with the given mode.
    Create,
    /// Move it below `archived/`, keeping its content (deletion policy `Snapshot`).
    Archive,
    /// Remove it and everything in it (deletion policy `Delete`).
    Delete,
}

impl Action {
    /// The value of `enclave storage-prep --action`.
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Archive => "archive",
            Self::Delete => "delete",
        }
    }
}

/// Why storage preparation refused or failed.
#[derive(Debug, Error)]
pub enum PrepError {
    /// The request itself is unsafe.
    #[error("refused: {0}")]
    Refused(String),
    /// The file system said no.
    #[error("{what} failed: {source}")]
    Io {
        /// The step.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl PrepError {
    /// Exit code of the subcommand: 2 for a refusal (an administrator must
    /// look), 1 for anything else (retried).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused(_) => 2,
            Self::Io { .. } => 1,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(Errno) -> PrepError {
    let what = what.into();
    move |e| PrepError::Io {
        what,
        source: e.into(),
    }
}

/// Opens `name` below `parent` as a directory, refusing symlinks.
fn open_dir(parent: impl AsFd, name: &str) -> Result<Option<OwnedFd>, PrepError> {
    match openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(PrepError::Refused(format!(
            "{name:?} is a symlink or not a directory; nothing was changed"
        ))),
        Err(e) => Err(io(format!("open {name}"))(e)),
    }
}

/// Opens `name` below `parent`, creating it with `mode` if absent.
fn open_or_create(parent: &OwnedFd, name: &str, mode: u32) -> Result<(OwnedFd, bool), PrepError> {
    if let Some(fd) = open_dir(parent, name)? {
        return Ok((fd, false));
    }
    match mkdirat(parent, name, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io(format!("create {name}"))(e)),
    }
    let fd = open_dir(parent, name)?
        .ok_or_else(|| PrepError::Refused(format!("{name:?} vanished while being created")))?;
    Ok((fd, true))
}

/// Checks `path` is relative and made of plain segments.
fn segments(path: &str) -> Result<Vec<&str>, PrepError> {
    let parts: Vec<&str> = path.split('/').collect();
    let plain = |s: &&str| {
        !s.is_empty()
            && s.len() <= 255
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if parts.len() < 2 || parts.len() > 8 || !parts.iter().all(plain) {
        return Err(PrepError::Refused(format!(
            "path {path:?} must be relative, like developers/<key>, made of lowercase letters, digits, '-' and '_'"
        )));
    }
    Ok(parts)
}

/// The directory `path` below `root`, for the developer `uid`/`gid`.
pub fn run(
    root: &Path,
    path: &str,
    uid: u32,
    gid: u32,
    mode: u32,
    action: Action,
) -> Result<String, PrepError> {
    if uid == 0 || gid == 0 {
        return Err(PrepError::Refused(
            "a developer directory is never owned by root".into(),
        ));
    }
    if mode & 0o077 != 0 {
        return Err(PrepError::Refused(format!(
            "mode {mode:o} would let others in; use 0700"
        )));
    }
    let parts = segments(path)?;
    let (leaf, parents) = parts
        .split_last()
        .ok_or_else(|| PrepError::Refused("empty path".into()))?;
    let root_fd = openat(
        rustix::fs::CWD,
        root,
        OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )
    .map_err(io(format!("open the company root {}", root.display())))?;
    let me = rustix::process::geteuid();
    let mut parent = root_fd;
    for name in parents {
        let (fd, created) = open_or_create(&parent, name, PARENT_MODE)?;
        if created {
            // mkdir's mode is subject to the umask; state it exactly.
            fchmod(&fd, Mode::from_raw_mode(PARENT_MODE)).map_err(io(format!("chmod {name}")))?;
        }
        let st = fstat(&fd).map_err(io(format!("stat {name}")))?;
        if st.st_uid != me.as_raw() {
            return Err(PrepError::Refused(format!(
                "{name:?} is owned by uid {} instead of the operator; nothing was changed",
                st.st_uid
            )));
        }
        parent = fd;
    }
    match action {
        Action::Create => create(&parent, leaf, uid, gid, mode),
        Action::Archive => archive(&parent, leaf, uid),
        Action::Delete => delete(&parent, leaf, uid),
    }
}

fn create(
    parent: &OwnedFd,
    leaf: &str,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<String, PrepError> {
    let (fd, created) = open_or_create(parent, leaf, 0o700)?;
    let st = fstat(&fd).map_err(io(format!("stat {leaf}")))?;
    if !created && st.st_uid != uid {
        return Err(PrepError::Refused(format!(
            "{leaf:?} exists and belongs to uid {}, not {uid}; Enclave never hands a directory to another uid",
            st.st_uid
        )));
    }
    if st.st_uid != uid || st.st_gid != gid {
        fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(io(format!("chown {leaf}")))?;
    }
    if st.st_mode & 0o7777 != mode {
        fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io(format!("chmod {leaf}")))?;
    }
    Ok(format!(
        "{} {leaf} for uid {uid} gid {gid} mode {mode:04o}",
        if created { "created" } else { "checked" }
    ))
}

/// Checks the leaf exists and is the developer's; `None` if absent.
fn owned_leaf(parent: &OwnedFd, leaf: &str, uid: u32) -> Result<Option<OwnedFd>, PrepError> {
    let Some(fd) = open_dir(parent, leaf)? else {
        return Ok(None);
    };
    let st = fstat(&fd).map_err(io(format!("stat {leaf}")))?;
    if st.st_uid != uid {
        return Err(PrepError::Refused(format!(
            "{leaf:?} belongs to uid {}, not {uid}; nothing was changed",
            st.st_uid
        )));
    }
    Ok(Some(fd))
}

fn archive(parent: &OwnedFd, leaf: &str, uid: u32) -> Result<String, PrepError> {
    if owned_leaf(parent, leaf, uid)?.is_none() {
        return Ok(format!("{leaf} is already gone"));
    }
    let (archived, _) = open_or_create(parent, "archived", PARENT_MODE)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let target = format!("{leaf}-{stamp}");
    renameat(parent, leaf, &archived, target.as_str()).map_err(io(format!("archive {leaf}")))?;
    Ok(format!("archived {leaf} as archived/{target}"))
}

fn delete(parent: &OwnedFd, leaf: &str, uid: u32) -> Result<String, PrepError> {
    let Some(fd) = owned_leaf(parent, leaf, uid)? else {
        return Ok(format!("{leaf} is already gone"));
    };
    let removed = remove_contents(&fd, 0)?;
    unlinkat(parent, leaf, AtFlags::REMOVEDIR).map_err(io(format!("remove {leaf}")))?;
    Ok(format!("removed {leaf} and {removed} entries in it"))
}

/// How deep below a developer's directory removal goes: each level holds
/// one open descriptor, and a tree deeper than this (unusual, or built to
/// exhaust the Job) is refused, kept whole, for an administrator.
pub const MAX_DEPTH: usize = 256;

/// Removes everything inside the directory `dir` (`depth` levels below the
/// developer's directory); symlinks are removed, never followed.
fn remove_contents(dir: &OwnedFd, depth: usize) -> Result<usize, PrepError> {
    if depth >= MAX_DEPTH {
        return Err(PrepError::Refused(format!(
            "the directory tree is deeper than {MAX_DEPTH} levels; nothing more was removed: remove the rest by hand"
        )));
    }
    let mut removed = 0;
    let mut names = Vec::new();
    for entry in Dir::read_from(dir).map_err(io("list a directory"))? {
        let entry = entry.map_err(io("read a directory entry"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        // NFS and Lustre often report no type in the entry: ask the inode
        // (without following a symlink).
        let kind = match entry.file_type() {
            FileType::Unknown => {
                let stat = statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io(format!("inspect {name}")))?;
                FileType::from_raw_mode(stat.st_mode)
            }
            kind => kind,
        };
        names.push((name, kind));
    }
    for (name, kind) in names {
        if kind == FileType::Directory {
            if let Some(child) = open_dir(dir, &name)? {
                removed += remove_contents(&child, depth + 1)?;
            }
            unlinkat(dir, name.as_str(), AtFlags::REMOVEDIR)
                .map_err(io(format!("remove {name}")))?;
        } else {
            unlinkat(dir, name.as_str(), AtFlags::empty()).map_err(io(format!("remove {name}")))?;
        }
        removed += 1;
    }
    Ok(removed)
}
