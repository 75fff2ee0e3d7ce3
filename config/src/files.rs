//! Reading the files a config names — the config file itself, the policy directory, keys,
//! certificates — with a bound on each: a reload (or a start) reads them before anything
//! else, so a file that never ends or never answers must be refused, not waited on.
//!
//! Only regular files are read. A FIFO blocks its reader until something writes to it (a
//! reload or `edgegate check` would wait forever), and a device such as `/dev/zero` or
//! `/dev/urandom` never ends (read until memory runs out). The file is opened without
//! blocking and its type checked on the open file, so a file swapped for a FIFO between a
//! look and the open is refused as well. Each kind of file has a size it may not pass, and
//! no more than that is ever read, whatever the file's size says.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

const MIB: u64 = 1 << 20;

/// The config file, and its last-known-good copy.
pub const CONFIG_FILE: u64 = 16 * MIB;
/// One Rego file: regorus' own limit, refused here before it is read.
pub const REGO_FILE: u64 = MIB;
/// Every Rego file of a policy directory together, so that a directory of many files each
/// within `REGO_FILE` cannot hold a reload for minutes (a parse may spend ~2.5 s on a
/// hostile 1 MiB file).
pub const REGO_DIRECTORY: u64 = 4 * MIB;
/// Entries of a policy directory, whatever they are.
pub const DIRECTORY_ENTRIES: usize = 1_000;
/// A policy directory's `data.json` or `data.yaml`: parsed into memory several times its
/// size.
pub const DATA_FILE: u64 = 16 * MIB;
/// A JWKS, a certificate chain, a private key, a token.
pub const KEY_FILE: u64 = MIB;
/// A CA bundle (a system's whole bundle is ~0.2 MiB).
pub const CA_BUNDLE: u64 = 4 * MIB;

/// The file's bytes, if it is a regular file of at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    // Opened without blocking: opening a FIFO to read otherwise waits for a writer.
    let file = File::options().read(true).custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits()).open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file ({what})")));
    }
    let too_large = |size: u64| {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{size} bytes, larger than the {} allowed", size_text(limit)),
        )
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    // The size can change between the look and the read: never read past the limit.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The file's text, as `read`, refused if it is not UTF-8.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read(path, limit)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()))
}

/// `limit` as the docs write it: `16 MiB`, `512 KiB`, or bytes.
fn size_text(limit: u64) -> String {
    if limit >= MIB && limit.is_multiple_of(MIB) {
        format!("{} MiB", limit / MIB)
    } else if limit >= 1024 && limit.is_multiple_of(1024) {
        format!("{} KiB", limit / 1024)
    } else {
        format!("{limit} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_within_its_limit_is_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").expect("write");
        assert_eq!(read(&path, 10).expect("read"), b"0123456789");
        assert_eq!(read_text(&path, 64).expect("read"), "0123456789");
        let e = read(&path, 9).expect_err("over the limit");
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(e.to_string(), "10 bytes, larger than the 9 bytes allowed");
        std::fs::write(&path, b"\xff\xfe").expect("write");
        assert_eq!(read_text(&path, 64).expect_err("not UTF-8").kind(), io::ErrorKind::InvalidData);
        assert_eq!(size_text(16 * MIB), "16 MiB");
        assert_eq!(size_text(512 * 1024), "512 KiB");
    }

    /// A FIFO (which would block the read until a writer came) and devices that never end
    /// are refused at once, also behind a symbolic link.
    #[test]
    fn fifos_devices_and_directories_are_refused_without_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("policy.rego");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let link = dir.path().join("data.json");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        let cases = [
            (fifo.as_path(), "not a regular file (a FIFO)"),
            (link.as_path(), "not a regular file (a device)"),
            (Path::new("/dev/urandom"), "not a regular file (a device)"),
            (dir.path(), "not a regular file (a directory)"),
        ];
        for (path, message) in cases {
            let e = read(path, CONFIG_FILE).expect_err("refused");
            assert_eq!(e.to_string(), message, "{}", path.display());
        }
        assert_eq!(read(&dir.path().join("missing"), KEY_FILE).expect_err("missing").kind(), io::ErrorKind::NotFound);
    }
}
