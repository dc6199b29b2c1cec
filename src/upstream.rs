//! How Iris reaches Kratos and Hydra: one way to build the HTTP clients, and the extra CA
//! certificates of `upstream.ca_path`, read once at start.

use std::path::Path;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Extra CA certificates, in the forms reqwest and rustls take.
#[derive(Default)]
pub struct Roots {
    /// For the reqwest clients (Kratos, Hydra's APIs).
    pub reqwest: Vec<reqwest::Certificate>,
    /// For the pass-through's rustls client.
    pub der: Vec<CertificateDer<'static>>,
}

impl Roots {
    /// The certificates of a PEM bundle; none without a path.
    pub fn load(path: Option<&Path>) -> Result<Roots, String> {
        let Some(path) = path else {
            return Ok(Roots::default());
        };
        let problem =
            |e: &dyn std::fmt::Display| format!("upstream.ca_path {}: {e}", path.display());
        let der = CertificateDer::pem_file_iter(path)
            .map_err(|e| problem(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| problem(&e))?;
        if der.is_empty() {
            return Err(problem(&"no certificate in the file"));
        }
        let reqwest = der
            .iter()
            .map(|cert| reqwest::Certificate::from_der(cert))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| problem(&e))?;
        Ok(Roots { reqwest, der })
    }
}

/// A pooled client for an upstream: a per-call timeout, no redirects (an answer is Kratos's or
/// Hydra's own, never a page it points to), no system proxy, and the extra roots.
pub fn http_client(timeout: Duration, roots: &Roots) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_merge(roots.reqwest.iter().cloned())
        .no_proxy()
        .build()
}
