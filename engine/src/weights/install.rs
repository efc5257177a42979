//! Installing a folder of shard sets as one transaction: written beside its place, under a
//! lock, and swapped in whole at the end. A writer that fails or is killed part-way (disk full,
//! a file-size limit, Ctrl-C) leaves the installed folder as it was; a second writer of the same
//! folder is refused while the first runs, naming it. So `verify` of an installed set never
//! sees half of one write and half of another.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::index::INDEX_FILE;
use super::pack::PackError;

/// Write `out` through `write`, which fills a fresh staging folder; swap the result in when it
/// succeeds. Staging (`.NAME.partial-PID`) and the lock (`.NAME.lock`) sit beside `out`, hidden
/// from the static file server.
pub fn install<T, E: From<PackError>>(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PackError(format!("{}: not a folder name", out.display())))?
        .to_string();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| PackError(format!("{}: {e}", parent.display())))?;
    let _lock = Lock::take(&parent.join(format!(".{name}.lock")), out)?;
    if !replaceable(out) {
        return Err(PackError(format!(
            "{} exists and holds something other than shard sets: refusing to replace it \
             (give an empty or new folder)",
            out.display()
        ))
        .into());
    }
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| PackError(format!("{}: {e}", staging.display())))?;
    let written = match write(&staging) {
        Ok(written) => written,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if let Err(e) = swap_in(&staging, out, &parent, &name) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.into());
    }
    Ok(written)
}

/// Whether `dir` may be replaced whole: absent, empty, a shard set, or a folder of shard sets
/// (a converted shape model). Hidden leftovers of earlier writes do not count.
fn replaceable(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return !dir.exists() || dir.is_dir();
    };
    if dir.join(INDEX_FILE).is_file() {
        return true;
    }
    entries.flatten().all(|entry| {
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        hidden || (entry.path().is_dir() && entry.path().join(INDEX_FILE).is_file())
    })
}

/// Put `staging` where `out` is: an atomic exchange where the OS has one (Linux), else two
/// renames; the old folder is removed after.
fn swap_in(staging: &Path, out: &Path, parent: &Path, name: &str) -> Result<(), PackError> {
    let failed = |e: std::io::Error| PackError(format!("installing {}: {e}", out.display()));
    if std::fs::symlink_metadata(out).is_err() {
        return std::fs::rename(staging, out).map_err(failed);
    }
    if exchange(staging, out).map_err(failed)? {
        // `staging` now holds the old folder.
        let _ = std::fs::remove_dir_all(staging);
        return Ok(());
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    std::fs::rename(out, &old).map_err(failed)?;
    if let Err(e) = std::fs::rename(staging, out) {
        let _ = std::fs::rename(&old, out);
        return Err(failed(e));
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Swap two paths atomically; `Ok(false)` where the OS cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths, relative to the working directory.
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if done == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EXDEV | libc::ENOTSUP) => Ok(false),
        _ => Err(error),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// The writer's lock: a file created exclusively, naming the process that holds it; removed
/// when dropped. One left by a process that no longer runs is taken over.
struct Lock(PathBuf);

impl Lock {
    fn take(path: &Path, out: &Path) -> Result<Lock, PackError> {
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    let since = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let command: Vec<String> = std::env::args().collect();
                    let _ = writeln!(file, "{} {since} {}", std::process::id(), command.join(" "));
                    return Ok(Lock(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(path).unwrap_or_default();
                    let mut words = holder.split_whitespace();
                    let pid = words.next().and_then(|p| p.parse::<u32>().ok());
                    if pid.is_some_and(|pid| !running(pid)) {
                        // Its writer is gone (killed part-way): its staging folder is junk.
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    let since = words.next().unwrap_or("?");
                    let command = words.collect::<Vec<_>>().join(" ");
                    return Err(PackError(format!(
                        "{} is being written by another process (pid {}, since unix time {since}: \
                         {command}); wait for it to finish, or remove {} if it no longer runs",
                        out.display(),
                        pid.map_or("?".into(), |p| p.to_string()),
                        path.display()
                    )));
                }
                Err(e) => return Err(PackError(format!("{}: {e}", path.display()))),
            }
        }
        Err(PackError(format!(
            "{}: could not take the lock",
            path.display()
        )))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether process `pid` still runs (where the OS tells; elsewhere assumed).
fn running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(dir: &Path, marker: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(INDEX_FILE), marker).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_installed_folder_and_no_leftovers() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("m");
        install(&out, |dir| -> Result<(), PackError> {
            set(dir, "one");
            Ok(())
        })
        .unwrap();
        let failed = install(&out, |dir| -> Result<(), PackError> {
            set(dir, "two");
            Err(PackError("disk full".into()))
        });
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read_to_string(out.join(INDEX_FILE)).unwrap(),
            "one"
        );
        install(&out, |dir| -> Result<(), PackError> {
            set(dir, "three");
            Ok(())
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join(INDEX_FILE)).unwrap(),
            "three"
        );
        let left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("m")], "{left:?}");
    }

    #[test]
    fn a_folder_of_other_things_is_not_replaced_and_a_held_lock_is_named() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("photos");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("cat.jpg"), "meow").unwrap();
        let refused = install(&out, |_| -> Result<(), PackError> { Ok(()) }).unwrap_err();
        assert!(refused.0.contains("refusing to replace"), "{refused}");
        assert!(out.join("cat.jpg").exists());

        let out = root.path().join("m");
        let lock = root.path().join(".m.lock");
        std::fs::write(&lock, format!("{} 1 orfeas pack first", std::process::id())).unwrap();
        let refused = install(&out, |_| -> Result<(), PackError> { Ok(()) }).unwrap_err();
        assert!(
            refused.0.contains(&format!("pid {}", std::process::id()))
                && refused.0.contains("orfeas pack first"),
            "{refused}"
        );
        // A lock whose process is gone is taken over.
        std::fs::write(&lock, "4194304999 1 orfeas pack gone").unwrap();
        install(&out, |dir| -> Result<(), PackError> {
            set(dir, "x");
            Ok(())
        })
        .unwrap();
        assert!(!lock.exists());
    }
}
