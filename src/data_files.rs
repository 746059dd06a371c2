//! The files portcullis keeps in `data_dir` (and beside its database):
//! how they are created, replaced and read, and the start-up check of the
//! ones that already exist.
//!
//! Rules (issue 10): a file is never written or read through a symbolic
//! link, and is readable by the owner only.
//! - `create_new`: `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600 (a planted link,
//!   even a dangling one, makes it fail instead of being followed).
//! - `replace`: for files rewritten whole (`portcullis.addr`, the key stamp,
//!   the CSRF secret, `first_api_key`): a fresh temp file beside the target
//!   made by `create_new` under a random name, written, synced, then renamed
//!   over the target (`rename` replaces a link, it never writes through it).
//!   A target that is a link is refused all the same: it means someone
//!   planted it.
//! - `read`: `O_NOFOLLOW`, regular files only (a linked `csrf_secret` would
//!   otherwise let whoever planted it choose the secret).
//! - The database, its `-wal`, `-shm` and `-journal`: SQLite's unix VFS
//!   opens all of them with `O_NOFOLLOW` and gives them the database's mode;
//!   `db::create_private` makes the database file itself with `create_new`.
//!
//! At start (`secure_existing`, from `App::new`) every one of our files that
//! exists is checked without following links: a link or a non-regular file
//! stops start-up with a message naming it; a mode looser than 0600 (any
//! group/other bit, or owner execute) is tightened to 0600 with a warning,
//! and if that fails start-up stops naming the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;

/// The mode of every file portcullis creates.
pub const PRIVATE_MODE: u32 = 0o600;
/// The mode `data_dir` is created with.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// The address the server listens on, written at start (port 0 picks one).
pub const ADDR_FILE: &str = "portcullis.addr";
/// The generated CSRF secret (when `PORTCULLIS_CSRF_SECRET` is unset).
pub const CSRF_SECRET_FILE: &str = "csrf_secret";
/// The first API key, written when none exists (`App::new`).
pub const FIRST_KEY_FILE: &str = "first_api_key";
/// Suffix of the key stamp beside the database (`db::keys::KeyCache`).
pub const KEY_STAMP_SUFFIX: &str = ".keys-stamp";
/// Files SQLite keeps beside the database.
const SQLITE_SIDE_FILES: &[&str] = &["-wal", "-shm", "-journal"];

fn nofollow(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::other(format!(
            "{} is a symbolic link; portcullis never follows links for its own files",
            path.display()
        ))
    } else {
        e
    }
}

/// Creates `path` for writing, mode 0600; fails if anything (a file, a
/// link, even a dangling one) is already there.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Replaces `path` with `contents` atomically (temp file, sync, rename), mode
/// 0600. Refuses when `path` is a symbolic link.
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    refuse_link(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", crate::ids::random_hex(6)));
    let tmp = path.with_file_name(tmp_name);
    let written = create_new(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    let done = written.and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Reads a whole regular file without following a link at `path`.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = OpenOptions::new()
        .read(true)
        // NONBLOCK: a FIFO planted here must not hang start-up.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| nofollow(path, e))?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Opens the log file for appending, creating it with mode 0600. Inside
/// `data_dir` a link there is refused; elsewhere (`/dev/stdout`, a path
/// the operator chose) links are followed as the operator set them up.
pub fn open_log(path: &Path, data_dir: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true).mode(PRIVATE_MODE);
    if is_inside(path, data_dir) {
        o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    o.open(path).map_err(|e| nofollow(path, e))
}

/// Creates `dir` (and missing parents) with mode 0700; an existing one is
/// left as it is, with a warning when others may write to it (whoever can
/// write there can plant links, which `secure_existing` then refuses).
pub fn create_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| format!("cannot create data_dir {}: {}", dir.display(), e))?;
    if let Ok(m) = std::fs::metadata(dir) {
        if m.permissions().mode() & 0o022 != 0 {
            crate::logging::warn(
                "data_dir is writable by other users; make it 0700",
                &[
                    ("dir", serde_json::json!(dir.display().to_string())),
                    (
                        "mode",
                        serde_json::json!(format!("{:o}", m.permissions().mode() & 0o7777)),
                    ),
                ],
            );
        }
    }
    Ok(())
}

fn refuse_link(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            Err(nofollow(path, io::Error::from_raw_os_error(libc::ELOOP)))
        }
        _ => Ok(()),
    }
}

/// Whether `path` lies in `dir` (compared after resolving what exists, so
/// `./data/x.log` and `/abs/data/x.log` agree).
fn is_inside(path: &Path, dir: &Path) -> bool {
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = resolve(parent.unwrap_or(Path::new(".")));
    parent.starts_with(resolve(dir))
}

/// Every file of ours that may exist: in `data_dir`, beside the database,
/// and the log file when it lies in `data_dir`.
pub fn our_files(cfg: &Config) -> Vec<PathBuf> {
    let dir = &cfg.server.data_dir;
    let mut files: Vec<PathBuf> = [ADDR_FILE, CSRF_SECRET_FILE, FIRST_KEY_FILE]
        .iter()
        .map(|n| dir.join(n))
        .collect();
    let db = cfg.database_path();
    for suffix in SQLITE_SIDE_FILES.iter().chain([&KEY_STAMP_SUFFIX]) {
        let mut name = db.as_os_str().to_os_string();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    files.push(db);
    if let Some(log) = &cfg.logging.file {
        if is_inside(log, dir) {
            files.push(log.clone());
        }
    }
    files
}

/// What the start-up check did to one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    Absent,
    Private,
    /// Tightened to 0600 from this mode.
    Tightened {
        from: u32,
    },
}

/// Checks one existing file without following a link: refuses a link or a
/// non-regular file, tightens a mode looser than 0600 (through the open
/// descriptor, so no link can be swapped in between).
pub fn check_file(path: &Path) -> Result<Checked, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Checked::Absent),
        Err(e) => return Err(format!("cannot inspect {}: {}", path.display(), e)),
    };
    if meta.file_type().is_symlink() {
        return Err(format!(
            "{} is a symbolic link; portcullis never follows links for its own files: remove it (or put the file itself there) and start again",
            path.display()
        ));
    }
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file; remove it and start again",
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & !PRIVATE_MODE == 0 {
        return Ok(Checked::Private);
    }
    let tighten = || -> io::Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::other("no longer a regular file"));
        }
        f.set_permissions(std::fs::Permissions::from_mode(PRIVATE_MODE))
    };
    tighten().map_err(|e| {
        format!(
            "{} has mode {:o}, readable beyond its owner, and cannot be tightened to 600: {}; run `chmod 600 {}` as its owner",
            path.display(),
            mode,
            nofollow(path, e),
            path.display()
        )
    })?;
    Ok(Checked::Tightened { from: mode })
}

/// The start-up check of every file in `our_files`. Returns the files
/// whose mode was tightened, with their old mode, for the caller to report
/// (the server logs a warning each, the command line prints them); the
/// first refusal is the start-up error.
pub fn secure_existing(cfg: &Config) -> Result<Vec<(PathBuf, u32)>, String> {
    let mut tightened = Vec::new();
    for path in our_files(cfg) {
        if let Checked::Tightened { from } = check_file(&path)? {
            tightened.push((path, from));
        }
    }
    Ok(tightened)
}

/// The warning for one tightened file.
pub const TIGHTENED_MSG: &str = "file mode was looser than 600; tightened to 600";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn temp_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("pc-files-{}", crate::ids::random_hex(6)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_never_go_through_a_planted_link() {
        let d = temp_dir();
        let outside = d.join("outside");
        std::fs::write(&outside, "precious").unwrap();
        let target = d.join("target");
        symlink(&outside, &target).unwrap();
        let dangling = d.join("dangling");
        symlink(d.join("nowhere"), &dangling).unwrap();

        // (case, result is an error)
        let cases: Vec<(&str, bool)> = vec![
            ("create_new_on_a_link", create_new(&target).is_err()),
            (
                "create_new_on_a_dangling_link",
                create_new(&dangling).is_err(),
            ),
            ("replace_a_link", replace(&target, b"evil").is_err()),
            ("read_a_link", read(&target).is_err()),
            (
                "log_in_data_dir_through_a_link",
                open_log(&target, &d).is_err(),
            ),
        ];
        for (name, refused) in cases {
            assert!(refused, "{}", name);
        }
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        assert!(!d.join("nowhere").exists());
        let e = read(&target).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("target"), "{}", e);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn replace_is_private_atomic_and_leaves_no_temp_file() {
        let d = temp_dir();
        let f = d.join("portcullis.addr");
        replace(&f, b"one").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(mode(&f), 0o600, "a replaced file gets 0600 again");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "no temp left");
        assert_eq!(read(&f).unwrap(), b"two");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn start_up_check_table() {
        let d = temp_dir();
        let file = |name: &str, m: u32| {
            let p = d.join(name);
            std::fs::write(&p, "x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
            p
        };
        let link = d.join("link");
        symlink(d.join("elsewhere"), &link).unwrap();
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        // (case, path, outcome or refusal text, mode after)
        type Case = (
            &'static str,
            PathBuf,
            Result<Checked, &'static str>,
            Option<u32>,
        );
        let cases: Vec<Case> = vec![
            ("absent", d.join("none"), Ok(Checked::Absent), None),
            (
                "private_is_kept",
                file("a", 0o600),
                Ok(Checked::Private),
                Some(0o600),
            ),
            (
                "stricter_is_kept",
                file("b", 0o400),
                Ok(Checked::Private),
                Some(0o400),
            ),
            (
                "world_readable_is_tightened",
                file("c", 0o644),
                Ok(Checked::Tightened { from: 0o644 }),
                Some(0o600),
            ),
            (
                "group_readable_is_tightened",
                file("e", 0o640),
                Ok(Checked::Tightened { from: 0o640 }),
                Some(0o600),
            ),
            (
                "executable_is_tightened",
                file("f", 0o700),
                Ok(Checked::Tightened { from: 0o700 }),
                Some(0o600),
            ),
            ("link_is_refused", link.clone(), Err("symbolic link"), None),
            (
                "directory_is_refused",
                sub.clone(),
                Err("not a regular file"),
                None,
            ),
        ];
        for (name, path, want, after) in cases {
            match (check_file(&path), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{}", name),
                (Err(got), Err(want)) => {
                    assert!(got.contains(want), "{}: {}", name, got);
                    assert!(
                        got.contains(&path.display().to_string()),
                        "{}: names the file",
                        name
                    );
                }
                (got, want) => panic!("{}: {:?}, wanted {:?}", name, got, want),
            }
            if let Some(m) = after {
                assert_eq!(mode(&path), m, "{}", name);
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_new_data_dir_is_private_and_an_existing_one_is_left_alone() {
        let d = temp_dir();
        let new = d.join("a").join("data");
        create_dir(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_dir(&new).unwrap();
        assert_eq!(mode(&new), 0o750, "the operator's choice is kept");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn our_files_cover_data_dir_database_side_files_and_an_inside_log() {
        let mut cfg = Config::default();
        cfg.server.data_dir = PathBuf::from("/srv/pc");
        cfg.logging.file = Some(PathBuf::from("/var/log/pc.log"));
        let names: Vec<String> = our_files(&cfg)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        for want in [
            "/srv/pc/portcullis.addr",
            "/srv/pc/csrf_secret",
            "/srv/pc/first_api_key",
            "/srv/pc/portcullis.db",
            "/srv/pc/portcullis.db-wal",
            "/srv/pc/portcullis.db-shm",
            "/srv/pc/portcullis.db.keys-stamp",
        ] {
            assert!(names.iter().any(|n| n == want), "{} in {:?}", want, names);
        }
        assert!(
            !names.iter().any(|n| n.contains("pc.log")),
            "log outside data_dir"
        );
        cfg.logging.file = Some(PathBuf::from("/srv/pc/portcullis.log"));
        assert!(our_files(&cfg).contains(&PathBuf::from("/srv/pc/portcullis.log")));
    }
}
