//! The operator's ed25519 keys, which sign what auditors verify (export manifests and the
//! chain heads of closed periods). A key directory holds, per key number n,
//! `operator-n.pub` (the public key in hex, what an auditor is given) and the secret seed
//! `operator-n.key` (hex, mode 0600), and a file `current` naming the key that signs now.
//! Rotating makes a new key current and renames the old secret to `operator-n.key.retired`,
//! so it signs nothing more while its `.pub` stays: everything it signed stays verifiable.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::cli::{generate_key, read_key_file};

const CURRENT: &str = "current";

/// One key of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorKey {
    /// `operator-n`.
    pub key_id: String,
    pub public_key: VerifyingKey,
    /// Whether it is the key that signs now.
    pub current: bool,
}

fn key_id(number: u32) -> String {
    format!("operator-{number}")
}

fn number_of(file_name: &str) -> Option<u32> {
    file_name
        .strip_prefix("operator-")?
        .strip_suffix(".pub")?
        .parse()
        .ok()
}

fn public_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.pub"))
}

fn secret_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.key"))
}

/// The key numbers in the directory, ascending.
fn numbers(dir: &Path) -> anyhow::Result<Vec<u32>> {
    let mut numbers = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(numbers),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", dir.display()));
        }
    };
    for entry in entries {
        let entry = entry?;
        if let Some(number) = entry.file_name().to_str().and_then(number_of) {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Writes `text` to a new file; never overwrites. Secrets are readable by the owner only.
fn write_new(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Points `current` at `id`, replacing the file in one rename.
fn set_current(dir: &Path, id: &str) -> anyhow::Result<()> {
    let staging = dir.join(format!("{CURRENT}.new"));
    std::fs::write(&staging, format!("{id}\n"))?;
    std::fs::rename(&staging, dir.join(CURRENT))
        .with_context(|| format!("cannot update {}", dir.join(CURRENT).display()))
}

fn add_key(dir: &Path, number: u32) -> anyhow::Result<OperatorKey> {
    let key = generate_key()?;
    let id = key_id(number);
    write_new(
        &secret_path(dir, &id),
        &format!("{}\n", hex::encode(key.to_bytes())),
        true,
    )?;
    write_new(
        &public_path(dir, &id),
        &format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
        false,
    )?;
    set_current(dir, &id)?;
    Ok(OperatorKey {
        key_id: id,
        public_key: key.verifying_key(),
        current: true,
    })
}

/// Creates the first operator key in `dir` (created if missing). Refused when the directory
/// already holds operator keys: rotate instead.
pub fn generate(dir: &Path) -> anyhow::Result<OperatorKey> {
    if !numbers(dir)?.is_empty() {
        bail!(
            "{} already holds operator keys; use `coalition operator-key rotate`",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    add_key(dir, 1)
}

/// Every key of the directory, oldest first.
pub fn list(dir: &Path) -> anyhow::Result<Vec<OperatorKey>> {
    let current = current_id(dir)?;
    numbers(dir)?
        .into_iter()
        .map(|number| {
            let id = key_id(number);
            Ok(OperatorKey {
                public_key: read_public_key(&public_path(dir, &id))?,
                current: id == current,
                key_id: id,
            })
        })
        .collect()
}

fn current_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(CURRENT);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: no operator key here (`coalition operator-key generate` makes one)",
            path.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

/// The key that signs now, with its id.
pub fn current_signer(dir: &Path) -> anyhow::Result<(String, SigningKey)> {
    let id = current_id(dir)?;
    let key = read_key_file(&secret_path(dir, &id))?;
    let public = read_public_key(&public_path(dir, &id))?;
    if key.verifying_key() != public {
        bail!("{id}: the secret key does not match {id}.pub");
    }
    Ok((id, key))
}

/// Makes a new key current; the old secret is renamed `.retired` and signs nothing more,
/// its public key stays so what it signed stays verifiable.
pub fn rotate(dir: &Path) -> anyhow::Result<OperatorKey> {
    let (old_id, _) = current_signer(dir)?;
    let next = numbers(dir)?.last().copied().unwrap_or(0) + 1;
    let key = add_key(dir, next)?;
    let old_secret = secret_path(dir, &old_id);
    let retired = dir.join(format!("{old_id}.key.retired"));
    std::fs::rename(&old_secret, &retired)
        .with_context(|| format!("cannot retire {}", old_secret.display()))?;
    Ok(key)
}

/// Reads a public key file (hex).
pub fn read_public_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("{} must hold 32 bytes of hex", path.display()))?;
    coalition_domain::signing::parse_public_key(&bytes)
        .with_context(|| format!("{} is not a usable ed25519 public key", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, Verifier};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "coalition-operator-key-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn generate_show_and_rotate_keep_old_signatures_verifiable() {
        let dir = scratch("rotate");
        let first = generate(&dir).unwrap();
        assert_eq!(first.key_id, "operator-1");
        assert!(generate(&dir).is_err(), "a second generate is refused");
        let (id, signer) = current_signer(&dir).unwrap();
        assert_eq!(id, "operator-1");
        let signature = signer.sign(b"manifest of period 1");

        let second = rotate(&dir).unwrap();
        assert_eq!(second.key_id, "operator-2");
        let keys = list(&dir).unwrap();
        assert_eq!(
            keys.iter()
                .map(|key| (key.key_id.as_str(), key.current))
                .collect::<Vec<_>>(),
            vec![("operator-1", false), ("operator-2", true)]
        );
        // The old public key still verifies what the old key signed; its secret is retired.
        assert!(
            keys[0]
                .public_key
                .verify(b"manifest of period 1", &signature)
                .is_ok()
        );
        assert!(!dir.join("operator-1.key").exists());
        assert!(dir.join("operator-1.key.retired").exists());
        assert_eq!(current_signer(&dir).unwrap().0, "operator-2");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("operator-2.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_without_keys_says_so() {
        let dir = scratch("empty");
        assert!(list(&dir).is_err());
        assert!(rotate(&dir).is_err());
        let error = current_signer(&dir).unwrap_err().to_string();
        assert!(error.contains("operator-key generate"), "{error}");
    }
}
