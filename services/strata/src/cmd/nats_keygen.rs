//! `strata nats-keygen FILE`: makes the nkey of a new NATS user, one per role of a fleet.
//!
//! A fleet's nats-server knows each role's user by an nkey public key (`deploy/nats/accounts.conf`), and
//! the role's processes prove they hold the matching seed (`nats.nkey_file`). NATS's own tools that make
//! them (`nk`, `nsc`) are Go programs that Strata's hosts do not have, and nats-server cannot make one, so
//! the command that already runs on every host does. The seed goes only to the file, created with mode
//! 0600 and never over an existing one; the public key, which is not a secret, is printed for the server's
//! config.

use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes a new user's seed to `path` and returns its public key (`U...`).
pub fn run(path: &Path) -> anyhow::Result<String> {
    let pair = nkeys::KeyPair::new_user();
    let seed = zeroize::Zeroizing::new(pair.seed().context("cannot encode the new nkey seed")?);
    let public = pair.public_key();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("nats-keygen: cannot create {}", path.display()))?;
    let text = zeroize::Zeroizing::new(format!(
        "# nkey seed of the NATS user {public}; keep it secret (nats.nkey_file)\n{}\n",
        seed.as_str()
    ));
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("nats-keygen: cannot write {}", path.display()))?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_an_owner_only_seed_of_the_printed_user_and_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealer.nk");
        let public = super::run(&path).unwrap();
        assert!(public.starts_with('U') && public.len() == 56, "{public}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let seed = text.lines().find(|l| !l.starts_with('#')).unwrap();
        assert_eq!(nkeys::KeyPair::from_seed(seed).unwrap().public_key(), public);
        let err = super::run(&path).unwrap_err();
        assert!(format!("{err:#}").contains("cannot create"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
