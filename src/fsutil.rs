//! Writing files safely: atomically, with their mode set before any byte lands.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `contents` to `path` atomically: a temporary file in the same directory,
/// created with `mode` before anything is written, fsynced, then renamed over `path`.
/// A failure leaves `path` as it was.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".imgforge-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    // The umask may have cleared bits the caller asked for; set the mode exactly.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| {
            format!(
                "setting mode {mode:o} on a temporary file in {}",
                dir.display()
            )
        })?;
    tmp.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming a temporary file onto {}", path.display()))?;
    Ok(())
}

/// The most bytes a small input file may hold: a key, a config, a CA bundle, a token, an
/// environment file. Anything larger is not one, and reading it whole would exhaust memory.
pub const SMALL_INPUT_MAX: u64 = 1 << 20;

/// Reads a small text file the user named. It must be a regular file (a directory,
/// device or FIFO could block or never end) of at most [`SMALL_INPUT_MAX`] bytes. The
/// error says what is wrong with the file, never what it holds.
pub fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, pipe or socket)"
        };
        return Err(Error::new(ErrorKind::InvalidInput, format!("it is {kind}")));
    }
    let too_big = |size: u64| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("it holds {size} bytes or more, over the {SMALL_INPUT_MAX} such a file may"),
        )
    };
    if meta.len() > SMALL_INPUT_MAX {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(SMALL_INPUT_MAX + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > SMALL_INPUT_MAX {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| Error::new(ErrorKind::InvalidData, "it is not UTF-8 text"))
}

/// Checks an output path before any work: not empty, its directory there, and not a
/// directory, device or other special file (imgforge replaces an output whole, by a
/// rename), nor the same file as one of `inputs`. Each refusal is a usage error naming
/// `flag`.
pub fn check_output(output: &Path, flag: &str, inputs: &[&Path]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let shown = output.display();
    if output.as_os_str().is_empty() {
        return Err(crate::exit::usage(format!("{flag}: the path is empty")));
    }
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(crate::exit::usage(format!(
            "{flag} {shown}: the directory {} does not exist; create it first",
            dir.display()
        )));
    }
    let Ok(meta) = fs::metadata(output) else {
        return Ok(());
    };
    if meta.is_dir() {
        return Err(crate::exit::usage(format!(
            "{flag} {shown} is a directory: give a file path in it"
        )));
    }
    if !meta.is_file() {
        return Err(crate::exit::usage(format!(
            "{flag} {shown} is not a regular file (a device, pipe or socket), which the output would replace: give a file path"
        )));
    }
    for input in inputs {
        if let Ok(m) = fs::metadata(input) {
            if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) {
                return Err(crate::exit::usage(format!(
                    "{flag} {shown} is {}, an input of this command: write the output elsewhere",
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn small_inputs_are_regular_bounded_text_files() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        fs::write(&ok, "key\n").unwrap();
        assert_eq!(read_small(&ok).unwrap(), "key\n");
        let big = dir.path().join("big");
        fs::write(&big, vec![b'a'; SMALL_INPUT_MAX as usize + 1]).unwrap();
        assert!(read_small(&big)
            .unwrap_err()
            .to_string()
            .contains("bytes or more"));
        assert!(read_small(dir.path())
            .unwrap_err()
            .to_string()
            .contains("directory"));
        let err = read_small(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let binary = dir.path().join("bin");
        fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        assert!(read_small(&binary)
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
    }

    #[test]
    fn outputs_that_are_not_plain_new_or_replaceable_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.yaml");
        fs::write(&input, "x").unwrap();
        let code = |r: Result<()>| r.map_err(|e| crate::exit::code_for(&e));
        assert_eq!(
            code(check_output(&dir.path().join("new"), "-o", &[&input])),
            Ok(())
        );
        let existing = dir.path().join("old");
        fs::write(&existing, "x").unwrap();
        assert_eq!(code(check_output(&existing, "-o", &[&input])), Ok(()));
        for bad in [
            dir.path().to_path_buf(),
            PathBuf::from("/dev/full"),
            dir.path().join("missing/x"),
            input.clone(),
            PathBuf::new(),
        ] {
            assert_eq!(code(check_output(&bad, "-o", &[&input])), Err(2), "{bad:?}");
        }
    }
}
