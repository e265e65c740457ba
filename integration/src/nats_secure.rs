//! A nats-server secured as a fleet's is: TLS with verified client certificates, and one nkey user per role
//! with the permissions of the shipped `deploy/nats/accounts.conf`.
//!
//! # What is shipped, what is the test's
//! The server includes `deploy/nats/accounts.conf` as it is, so a test proves the permissions operators
//! get; the users' public keys reach it as the environment variables it names (`STRATA_<ROLE>_NKEY`).
//! `deploy/nats/tls.conf` is included with its `/etc/strata/nats/` paths moved into the test directory.
//!
//! # Keys and certificates
//! Made at test time, in the test directory: the certificates by `openssl` (a CA, a server certificate
//! for 127.0.0.1, one client certificate), as README's "Securing the bus" does; the nkeys by the
//! `strata nats-keygen` under test, run as `postgres`, so each seed file is the owner-only file of the
//! user the Strata processes run as. The client's private key is given to `postgres` with mode 0600 too,
//! since Strata refuses secrets that others can read.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bins::StrataBins;
use crate::nats::NatsServer;
use crate::os_user::{chown_to_postgres, command_as_postgres};
use crate::process::run;
use crate::testdir::TestDir;

/// The roles of `deploy/nats/accounts.conf`, one NATS user each.
pub const ROLES: [&str; 4] = ["collector", "sealer", "uploader", "replicator"];

/// The shipped server-side files.
fn deploy_nats() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats")
}

/// A test CA and the certificates it signed, as PEM files.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Owned by `postgres`, mode 0644.
    pub client_cert: PathBuf,
    /// Owned by `postgres`, mode 0600.
    pub client_key: PathBuf,
    /// A second CA's client certificate and key, which the server must refuse.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

impl TestPki {
    /// Makes the CA, the server's certificate (for 127.0.0.1 and localhost) and a client certificate in
    /// `<test dir>/pki`, with `openssl`; panics with its output when it fails.
    pub fn generate(dir: &TestDir) -> TestPki {
        let pki = dir.subdir("pki");
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(args).current_dir(&pki);
            run(&mut cmd).unwrap_or_else(|e| panic!("openssl {args:?} failed (is openssl installed?): {e}"));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let make_ca = |name: &str| {
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            let (key, pem, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN=Strata test {name}"));
            args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(&args);
        };
        make_ca("ca");
        make_ca("other-ca");
        let sign = |name: &str, ca: &str, ext: &str| {
            fs::write(pki.join(format!("{name}.ext")), ext).expect("write extension file");
            let (key, csr, subj) = (format!("{name}.key"), format!("{name}.csr"), format!("/CN=strata {name}"));
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&args);
            let (ca_pem, ca_key, pem, extfile) =
                (format!("{ca}.pem"), format!("{ca}.key"), format!("{name}.pem"), format!("{name}.ext"));
            openssl(&[
                "x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial", "-out", &pem, "-days",
                "2", "-extfile", &extfile,
            ]);
        };
        sign("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
        sign("client", "ca", "extendedKeyUsage=clientAuth\n");
        sign("stranger", "other-ca", "extendedKeyUsage=clientAuth\n");
        for name in ["ca.pem", "server.pem", "client.pem", "stranger.pem"] {
            set_mode(&pki.join(name), 0o644);
        }
        // nats-server runs as root in the tests; the clients as postgres.
        set_mode(&pki.join("server.key"), 0o600);
        for name in ["client.key", "client.pem", "stranger.key", "stranger.pem"] {
            chown_to_postgres(&pki.join(name)).expect("chown a client file to postgres");
        }
        set_mode(&pki.join("client.key"), 0o600);
        set_mode(&pki.join("stranger.key"), 0o600);
        TestPki {
            ca: pki.join("ca.pem"),
            server_cert: pki.join("server.pem"),
            server_key: pki.join("server.key"),
            client_cert: pki.join("client.pem"),
            client_key: pki.join("client.key"),
            stranger_cert: pki.join("stranger.pem"),
            stranger_key: pki.join("stranger.key"),
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {mode:o} {}: {e}", path.display()));
}

/// One role's NATS user.
#[derive(Debug, Clone)]
pub struct RoleKey {
    pub role: &'static str,
    /// The seed, owner-only, owned by `postgres` (what `nats.nkey_file` names).
    pub seed_file: PathBuf,
    /// `U...`, as the server's config knows the user.
    pub public_key: String,
}

/// Makes `role`'s nkey with `strata nats-keygen`, run as `postgres`, into `<test dir>/nats-keys`.
pub fn keygen(dir: &TestDir, bins: &StrataBins, role: &'static str) -> RoleKey {
    let seed_file = dir.subdir("nats-keys").join(format!("{role}.nk"));
    let mut cmd = command_as_postgres(bins.path("strata"));
    cmd.arg("nats-keygen").arg(&seed_file);
    let out = run(&mut cmd).unwrap_or_else(|e| panic!("strata nats-keygen {} failed: {e}", seed_file.display()));
    let public_key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(public_key.starts_with('U') && !public_key.contains('\n'), "nats-keygen printed {public_key:?}");
    RoleKey { role, seed_file, public_key }
}

/// A nats-server with the shipped TLS and accounts config, and the keys and certificates of its users.
#[derive(Debug)]
pub struct SecureNats {
    pub server: NatsServer,
    pub pki: TestPki,
    pub keys: Vec<RoleKey>,
}

impl SecureNats {
    /// Makes the certificates and one nkey per role of [`ROLES`], then starts the server (in
    /// `<test dir>/nats`) and waits until it is ready.
    pub fn start(dir: &TestDir, bins: &StrataBins) -> SecureNats {
        let pki = TestPki::generate(dir);
        let keys: Vec<RoleKey> = ROLES.iter().map(|role| keygen(dir, bins, role)).collect();
        let home = dir.subdir("nats");
        let shipped = deploy_nats();
        let tls = fs::read_to_string(shipped.join("tls.conf")).expect("read deploy/nats/tls.conf");
        assert!(tls.contains("/etc/strata/nats/server.pem"), "deploy/nats/tls.conf no longer names /etc/strata/nats/");
        let pki_dir = format!("{}/", pki.ca.parent().expect("pki dir").display());
        fs::write(home.join("tls.conf"), tls.replace("/etc/strata/nats/", &pki_dir)).expect("write tls.conf");
        fs::copy(shipped.join("accounts.conf"), home.join("accounts.conf")).expect("copy deploy/nats/accounts.conf");
        let env: Vec<(String, String)> =
            keys.iter().map(|k| (format!("STRATA_{}_NKEY", k.role.to_uppercase()), k.public_key.clone())).collect();
        let mut server = NatsServer::start_with(dir, "nats", "include ./tls.conf\ninclude ./accounts.conf\n", &env);
        // The readiness probe opens a plain TCP connection and closes it: a TLS server logs that as a
        // handshake error.
        server.allow_log(r"TLS handshake error: EOF");
        SecureNats { server, pki, keys }
    }

    /// `tls://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.server.port())
    }

    /// `role`'s user; panics for a role not in [`ROLES`].
    pub fn key(&self, role: &str) -> &RoleKey {
        self.keys.iter().find(|k| k.role == role).unwrap_or_else(|| panic!("no NATS user for role {role}"))
    }

    /// The `[nats]` table of a `role`'s host: the fleet's TLS files, the role's nkey and inbox prefix.
    pub fn nats_table(&self, role: &str) -> String {
        format!(
            "[nats]\ntls_ca_file = {}\ntls_cert_file = {}\ntls_key_file = {}\nnkey_file = {}\ninbox_prefix = \"_INBOX_{role}\"\n",
            toml_path(&self.pki.ca),
            toml_path(&self.pki.client_cert),
            toml_path(&self.pki.client_key),
            toml_path(&self.key(role).seed_file),
        )
    }

    /// The environment that turns a config written with another role's [`SecureNats::nats_table`] into
    /// `role`'s: its nkey file and inbox prefix (`STRATA_NATS__*`).
    pub fn role_env(&self, role: &str) -> Vec<(String, String)> {
        vec![
            ("STRATA_NATS__NKEY_FILE".into(), self.key(role).seed_file.display().to_string()),
            ("STRATA_NATS__INBOX_PREFIX".into(), format!("_INBOX_{role}")),
        ]
    }
}

fn toml_path(path: &Path) -> String {
    crate::config::toml_string(&path.display().to_string())
}
