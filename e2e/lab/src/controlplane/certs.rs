//! The control plane's PKI, made fresh for every control plane: a CA, the API
//! server's serving certificate, client certificates (the user is the CN, the
//! group the O, as the API server reads them) and the service-account token
//! signing key pair. ECDSA P-256 throughout: fast to make, and every
//! component accepts it.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::ControlPlaneError;

/// Names the serving certificate is valid for: loopback (the host, and every
/// node namespace through its forwarder) and the in-cluster names.
const SERVING_DNS: [&str; 5] = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The CA and the files made from it, in one directory.
pub struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> ControlPlaneError {
    let what = what.to_string();
    move |source| ControlPlaneError::Cert { what, source }
}

impl Pki {
    /// Make the CA, the serving certificate (for 127.0.0.1, the in-cluster
    /// names and `kubernetes_ip`, the `kubernetes` Service's address) and the
    /// service-account key pair under `dir`.
    pub fn create(dir: &Path, kubernetes_ip: IpAddr) -> Result<Pki, ControlPlaneError> {
        std::fs::create_dir_all(dir).map_err(|source| ControlPlaneError::Io {
            what: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard-lab-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(cert_err("CA key"))?;
        let cert = params.self_signed(&key).map_err(cert_err("CA"))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca: Issuer::new(params, key),
        };
        write(&pki.ca_cert(), cert.pem().as_bytes(), false)?;

        let mut sans: Vec<SanType> = SERVING_DNS
            .iter()
            .map(|n| {
                (*n).try_into()
                    .map(SanType::DnsName)
                    .map_err(cert_err("serving DNS name"))
            })
            .collect::<Result<_, _>>()?;
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        sans.push(SanType::IpAddress(kubernetes_ip));
        pki.issue(
            "apiserver",
            "kube-apiserver",
            None,
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;

        let sa = KeyPair::generate().map_err(cert_err("service-account key"))?;
        write(&pki.sa_key(), sa.serialize_pem().as_bytes(), true)?;
        write(&pki.sa_pub(), sa.public_key_pem().as_bytes(), false)?;
        Ok(pki)
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn serving_cert(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }

    pub fn serving_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }

    /// The service-account token signing key (private) and its public half.
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }

    /// A client certificate for `user` in `group`, written as `<file>.crt`
    /// and `<file>.key`.
    pub fn client(
        &self,
        file: &str,
        user: &str,
        group: Option<&str>,
    ) -> Result<CertFiles, ControlPlaneError> {
        self.issue(
            file,
            user,
            group,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue(
        &self,
        file: &str,
        common_name: &str,
        organization: Option<&str>,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertFiles, ControlPlaneError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(cert_err(file))?;
        let cert = params.signed_by(&key, &self.ca).map_err(cert_err(file))?;
        let out = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        write(&out.cert, cert.pem().as_bytes(), false)?;
        write(&out.key, key.serialize_pem().as_bytes(), true)?;
        Ok(out)
    }
}

/// Write a file; `secret` ones are readable by their owner only.
pub(super) fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), ControlPlaneError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|source| ControlPlaneError::Io {
            what: "write",
            path: path.to_path_buf(),
            source,
        })
}
