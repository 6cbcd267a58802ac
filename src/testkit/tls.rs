//! A PostgreSQL cluster that speaks TLS only, for the tests of SPEC §6
//! ("TLS to PostgreSQL"): TCP on a loopback address of its own
//! (`127.0.0.N`, port 5432), `ssl=on` with a server certificate signed by a
//! CA made for this run, and `hostssl` the only TCP access (`hostnossl`
//! rejected). Its Unix socket stays open to the harness for `CREATE
//! DATABASE` and counting connections.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::cluster::{Cluster, ClusterOptions, TestDatabase};

/// The shared TLS cluster, started on first use.
pub fn tls_cluster() -> &'static TlsCluster {
    static SHARED: OnceLock<TlsCluster> = OnceLock::new();
    SHARED.get_or_init(TlsCluster::start)
}

/// A CA and a server certificate it signed, as PEM.
pub struct Pki {
    /// The CA certificate.
    pub ca_pem: String,
    /// The server certificate.
    pub cert_pem: String,
    /// The server's private key (PKCS#8).
    pub key_pem: String,
}

impl Pki {
    /// A fresh CA and a certificate for `names` (host names or IP addresses).
    pub fn new(names: &[&str]) -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name
            .push(DnType::CommonName, "chatpool test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("server params");
        leaf.distinguished_name.push(DnType::CommonName, names[0]);
        leaf.use_authority_key_identifier_extension = true;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf.signed_by(&key, &issuer).expect("server certificate");
        Pki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The running TLS-only cluster.
pub struct TlsCluster {
    /// The cluster (its admin connections use the Unix socket).
    pub cluster: Cluster,
    /// The loopback address it listens on (port 5432).
    pub host: Ipv4Addr,
    /// The CA that signed its certificate, as a PEM file.
    pub ca_file: PathBuf,
    /// A CA that did not sign it, as a PEM file.
    pub other_ca_file: PathBuf,
    _files: tempfile::TempDir,
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let host = free_loopback();
        let files = tempfile::Builder::new()
            .prefix("chatpool-tls-")
            .tempdir()
            .expect("a directory for the certificates");
        let dir = files.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let pki = Pki::new(&[&host.to_string(), "localhost"]);
        let write = |name: &str, text: &str, mode: u32| -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write a certificate file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        };
        let ca_file = write("ca.pem", &pki.ca_pem, 0o644);
        let other_ca_file = write("other-ca.pem", &Pki::new(&["localhost"]).ca_pem, 0o644);
        let cert = write("server.crt", &pki.cert_pem, 0o644);
        let key = write("server.key", &pki.key_pem, 0o600);
        give_to_server_user(&key);
        let hba = write(
            "pg_hba.conf",
            "local all all trust\n\
             hostssl all all 127.0.0.0/8 trust\n\
             hostnossl all all 0.0.0.0/0 reject\n",
            0o644,
        );
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let settings = vec![
            ("listen_addresses".into(), host.to_string()),
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), path(&cert)),
            ("ssl_key_file".into(), path(&key)),
            ("hba_file".into(), path(&hba)),
        ];
        let cluster = Cluster::start(ClusterOptions {
            settings,
            ..ClusterOptions::for_tests()
        });
        TlsCluster {
            cluster,
            host,
            ca_file,
            other_ca_file,
            _files: files,
        }
    }

    /// A URL to `db` over TCP (so over TLS), with `params` (`sslmode=...`).
    pub fn url(&self, db: &TestDatabase, params: &str) -> String {
        format!(
            "postgres://chatpool@{}:5432/{}?{params}",
            self.host, db.name
        )
    }

    /// A URL to `db` that names the server `name` (which its certificate
    /// does not) but connects to its address (`hostaddr`).
    pub fn url_naming(&self, name: &str, db: &TestDatabase, params: &str) -> String {
        format!(
            "postgres://chatpool@{name}:5432/{}?hostaddr={}&{params}",
            db.name, self.host
        )
    }
}

/// A loopback address (`127.0.0.2` to `127.0.0.254`) whose port 5432 is free.
fn free_loopback() -> Ipv4Addr {
    for _ in 0..50 {
        let host = Ipv4Addr::new(127, 0, 0, rand::random_range(2..=254));
        if std::net::TcpListener::bind((host, 5432)).is_ok() {
            return host;
        }
    }
    panic!("no loopback address with port 5432 free (is a server listening on 0.0.0.0:5432?)");
}

/// When root, PostgreSQL runs as `postgres` and accepts a key only if it owns
/// it with no access for others.
fn give_to_server_user(key: &Path) {
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("the postgres user (PostgreSQL runs as it when root)");
    std::os::unix::fs::chown(key, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .expect("chown the server key");
}
