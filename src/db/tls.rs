//! TLS to PostgreSQL with rustls (SPEC §6), with libpq's `sslmode` meanings.
//!
//! - `disable`: plain TCP.
//! - `prefer` (the default) and `require`: encrypted, the certificate not
//!   checked (`prefer` falls back to plain TCP when the server has no TLS).
//!   Handshake signatures are still verified, so the session is bound to the
//!   certificate presented.
//! - `verify-ca`: the certificate chain must verify against `sslrootcert`
//!   (else the system's roots); any host name.
//! - `verify-full`: `verify-ca`, and the certificate must name the host.
//!
//! One [`Tls`] connector serves the pool, the listener and the cancel request
//! sent after a timed-out transaction. A Unix-socket host never uses TLS
//! (PostgreSQL does not offer it there).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{SslMode, TlsSettings};

/// The connector every chatpool connection is opened with; cheap to clone.
#[derive(Clone)]
pub struct Tls {
    connect: MakeRustlsConnect,
    mode: SslMode,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("mode", &self.mode).finish()
    }
}

impl Tls {
    /// The connector for `settings`, reading `sslrootcert` (or the system's
    /// roots) once, now.
    ///
    /// # Errors
    /// An unreadable or empty CA file, or no system roots for a verifying mode.
    pub fn new(settings: &TlsSettings) -> anyhow::Result<Self> {
        let config = client_config(settings.mode, settings.root_cert.as_deref())?;
        Ok(Self {
            connect: MakeRustlsConnect::new(config),
            mode: settings.mode,
        })
    }

    /// The connector for the embedded cluster (a Unix socket: never TLS).
    pub fn plain() -> Self {
        Self::new(&TlsSettings::disabled()).expect("a non-verifying TLS config always builds")
    }

    /// The tokio-postgres connector.
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connect.clone()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: SslMode, root_cert: Option<&Path>) -> anyhow::Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    if !mode.verifies() {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth());
    }
    let roots = Arc::new(roots(root_cert)?);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider).build()?;
    Ok(if mode == SslMode::VerifyFull {
        builder.with_webpki_verifier(webpki).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            .with_no_client_auth()
    })
}

/// The CA certificates in the PEM file `path`, else the system's.
fn roots(path: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match path {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("sslrootcert {shown}: {e}"))?;
            for cert in certs {
                let cert = cert.map_err(|e| anyhow::anyhow!("sslrootcert {shown}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("sslrootcert {shown}: {e}"))?;
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "sslrootcert {shown}: no certificate in it"
            );
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            anyhow::ensure!(
                !roots.is_empty(),
                "sslmode verify-ca/verify-full: no system CA certificates found; \
                 give the CA with sslrootcert=PATH"
            );
        }
    }
    Ok(roots)
}

/// `prefer`/`require`: any certificate, but a handshake signed by its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the whole chain is verified (webpki checks the name last, so
/// a name error means the chain passed), the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
