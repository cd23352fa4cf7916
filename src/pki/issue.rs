//! Keys and certificates for one table entry: generate, issue, and decide whether what is on
//! disk can be kept. Keys come from the OS RNG only (ring's SystemRandom for ECDSA, `OsRng` for
//! RSA); serial numbers are random.

use std::fmt;

use rand::rngs::OsRng;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::table::{CaId, Cert, Eku, KeyUsage, San};
use crate::profile::{KeyAlgorithm, PkiSpec};

/// Certificates start this far in the past, so nodes with a slightly slow clock accept them
/// (kubeadm does the same).
pub const BACKDATE: Duration = Duration::minutes(5);

/// A certificate is renewed when less than this much of it is left (or a third of its lifetime,
/// whichever is shorter, so short-lived test certificates are not re-issued on every run).
pub const RENEW_BEFORE: Duration = Duration::days(30);

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("cannot generate a {alg:?} key: {reason}")]
    KeyGen { alg: KeyAlgorithm, reason: String },
    #[error("certificate {name}: {source}")]
    Rcgen {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("certificate {name}: SAN `{san}` is not a valid DNS name or IP address (check apiServer.extraSANs and apiServer.endpoint)")]
    BadSan { name: String, san: String },
}

/// A CA ready to sign: its certificate and key.
pub struct Ca {
    pub id: CaId,
    pub cert_pem: String,
    pub der: Vec<u8>,
    pub not_after: OffsetDateTime,
    pub issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Build from a CA certificate (PEM) and its key; the certificate must parse.
    pub fn new(id: CaId, cert_pem: String, key: KeyPair) -> Result<Ca, Stale> {
        let der = pem_to_der(cert_pem.as_bytes())?;
        let not_after = {
            let (_, x) =
                X509Certificate::from_der(&der).map_err(|e| Stale::Unparsable(e.to_string()))?;
            x.validity().not_after.to_datetime()
        };
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key)
            .map_err(|e| Stale::Unparsable(e.to_string()))?;
        Ok(Ca {
            id,
            cert_pem,
            der,
            not_after,
            issuer,
        })
    }
}

/// Why a certificate on disk cannot be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    Missing,
    Unparsable(String),
    KeyMismatch,
    KeyAlgorithm,
    NotSignedByCa,
    Subject,
    Sans,
    Usages,
    BasicConstraints,
    NotYetValid,
    Expiring { days_left: i64 },
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stale::Missing => f.write_str("missing"),
            Stale::Unparsable(e) => write!(f, "unparsable ({e})"),
            Stale::KeyMismatch => f.write_str("key does not match the certificate"),
            Stale::KeyAlgorithm => f.write_str("key algorithm differs from pki.keyAlgorithm"),
            Stale::NotSignedByCa => f.write_str("not signed by the current CA"),
            Stale::Subject => f.write_str("subject differs from the table"),
            Stale::Sans => f.write_str("SANs differ from the table"),
            Stale::Usages => f.write_str("key usages differ from the table"),
            Stale::BasicConstraints => f.write_str("CA flag differs from the table"),
            Stale::NotYetValid => f.write_str("not valid yet"),
            Stale::Expiring { days_left } => write!(f, "expires in {days_left} day(s)"),
        }
    }
}

/// A new private key of the profile's algorithm. ring cannot generate RSA keys, so RSA keys
/// come from the `rsa` crate and are loaded into rcgen as PKCS#8.
pub fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, IssueError> {
    let err = |reason: String| IssueError::KeyGen { alg, reason };
    let bits = match alg {
        KeyAlgorithm::EcdsaP256 => {
            return KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| err(e.to_string()))
        }
        KeyAlgorithm::Rsa2048 => 2048,
        KeyAlgorithm::Rsa3072 => 3072,
        KeyAlgorithm::Rsa4096 => 4096,
    };
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| err(e.to_string()))?;
    let der = key.to_pkcs8_der().map_err(|e| err(e.to_string()))?;
    KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| err(e.to_string()))
}

/// Load a PKCS#8 PEM private key (any algorithm rcgen signs with).
pub fn load_key(pem: &[u8]) -> Result<KeyPair, Stale> {
    let s = std::str::from_utf8(pem).map_err(|e| Stale::Unparsable(e.to_string()))?;
    KeyPair::from_pem(s).map_err(|e| Stale::Unparsable(e.to_string()))
}

/// Whether `key` is of the profile's algorithm (and RSA size).
pub fn key_is(key: &KeyPair, alg: KeyAlgorithm) -> bool {
    let spki_der = key.subject_public_key_info();
    let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(&spki_der) else {
        return false;
    };
    match (spki.parsed(), alg) {
        (Ok(PublicKey::EC(_)), KeyAlgorithm::EcdsaP256) => {
            key.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256
        }
        (Ok(PublicKey::RSA(r)), KeyAlgorithm::Rsa2048) => r.key_size() == 2048,
        (Ok(PublicKey::RSA(r)), KeyAlgorithm::Rsa3072) => r.key_size() == 3072,
        (Ok(PublicKey::RSA(r)), KeyAlgorithm::Rsa4096) => r.key_size() == 4096,
        _ => false,
    }
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    // Positive and minimally encoded: top bit clear, next bit set.
    b[0] = (b[0] & 0x3f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn to_rcgen_san(cert: &Cert, san: &San) -> Result<SanType, IssueError> {
    match san {
        San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        San::Dns(d) => {
            let valid = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
                });
            let bad = || IssueError::BadSan {
                name: cert.name.clone(),
                san: d.clone(),
            };
            if !valid {
                return Err(bad());
            }
            Ok(SanType::DnsName(d.clone().try_into().map_err(|_| bad())?))
        }
    }
}

/// Check every SAN of `cert` before anything is written, so a bad profile writes nothing.
pub fn check_sans(cert: &Cert) -> Result<(), IssueError> {
    for s in &cert.sans {
        to_rcgen_san(cert, s)?;
    }
    Ok(())
}

/// Issue `cert` for `key`, signed by `ca` (self-signed when `ca` is None). Returns the PEM.
pub fn issue(
    cert: &Cert,
    key: &KeyPair,
    ca: Option<&Ca>,
    spec: &PkiSpec,
    now: OffsetDateTime,
) -> Result<String, IssueError> {
    let rc = |source| IssueError::Rcgen {
        name: cert.name.clone(),
        source,
    };
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in &cert.orgs {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, cert.cn.as_str());
    p.distinguished_name = dn;
    let start = (now - BACKDATE).replace_nanosecond(0).unwrap_or(now);
    let days = if cert.is_ca.is_some() {
        spec.ca_validity_days
    } else {
        spec.cert_validity_days
    };
    p.not_before = start;
    p.not_after = start + Duration::days(i64::from(days));
    if let Some(ca) = ca {
        // A certificate never outlives its CA.
        p.not_after = p.not_after.min(ca.not_after);
    }
    p.serial_number = Some(random_serial());
    p.key_usages = cert
        .key_usages(spec.key_algorithm)
        .into_iter()
        .map(|u| match u {
            KeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            KeyUsage::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            KeyUsage::KeyCertSign => KeyUsagePurpose::KeyCertSign,
            KeyUsage::CrlSign => KeyUsagePurpose::CrlSign,
        })
        .collect();
    p.extended_key_usages = cert
        .ekus
        .iter()
        .map(|e| match e {
            Eku::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            Eku::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
        })
        .collect();
    p.subject_alt_names = cert
        .sans
        .iter()
        .map(|s| to_rcgen_san(cert, s))
        .collect::<Result<_, _>>()?;
    match ca {
        None => {
            // Path length 0: CAs here sign leaf certificates only.
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            Ok(p.self_signed(key).map_err(rc)?.pem())
        }
        Some(ca) => {
            p.is_ca = IsCa::ExplicitNoCa;
            p.use_authority_key_identifier_extension = true;
            Ok(p.signed_by(key, &ca.issuer).map_err(rc)?.pem())
        }
    }
}

pub fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, Stale> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| Stale::Unparsable(e.to_string()))?;
    if p.label != "CERTIFICATE" {
        return Err(Stale::Unparsable(format!("PEM block is {}", p.label)));
    }
    Ok(p.contents)
}

/// Whether the certificate `pem` on disk, with `key`, is still exactly what the table asks for,
/// signed by the CA certificate `ca_der` (or self-signed for a CA), and not near expiry.
pub fn check_existing(
    cert: &Cert,
    pem: &[u8],
    key: &KeyPair,
    ca_der: Option<&[u8]>,
    alg: KeyAlgorithm,
    now: OffsetDateTime,
) -> Result<(), Stale> {
    let der = pem_to_der(pem)?;
    let (_, x) = X509Certificate::from_der(&der).map_err(|e| Stale::Unparsable(e.to_string()))?;
    if !key_is(key, alg) {
        return Err(Stale::KeyAlgorithm);
    }
    if x.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(Stale::KeyMismatch);
    }
    match ca_der {
        Some(ca_der) => {
            let (_, cax) = X509Certificate::from_der(ca_der)
                .map_err(|e| Stale::Unparsable(format!("CA: {e}")))?;
            if x.issuer().as_raw() != cax.subject().as_raw()
                || x.verify_signature(Some(cax.public_key())).is_err()
            {
                return Err(Stale::NotSignedByCa);
            }
        }
        None => {
            if x.issuer().as_raw() != x.subject().as_raw() || x.verify_signature(None).is_err() {
                return Err(Stale::NotSignedByCa);
            }
        }
    }
    let cns: Vec<&str> = x
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let orgs: Vec<&str> = x
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .collect();
    if cns != [cert.cn.as_str()] || orgs != cert.orgs.iter().map(String::as_str).collect::<Vec<_>>()
    {
        return Err(Stale::Subject);
    }
    let is_ca = x
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca);
    if is_ca != cert.is_ca.is_some() {
        return Err(Stale::BasicConstraints);
    }
    if read_usages(&x) != (cert.key_usages(alg), sorted(cert.ekus.clone())) {
        return Err(Stale::Usages);
    }
    let mut want = cert.sans.clone();
    want.sort();
    if read_sans(&x) != want {
        return Err(Stale::Sans);
    }
    let v = x.validity();
    let (nb, na) = (v.not_before.to_datetime(), v.not_after.to_datetime());
    if nb > now + BACKDATE {
        return Err(Stale::NotYetValid);
    }
    let renew_before = RENEW_BEFORE.min((na - nb) / 3);
    if na - now < renew_before {
        return Err(Stale::Expiring {
            days_left: (na - now).whole_days(),
        });
    }
    Ok(())
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Key usages (in `KeyUsage` order) and EKUs (sorted) of a parsed certificate. Usages this PKI
/// never issues are reported as an impossible value so a comparison fails.
pub fn read_usages(x: &X509Certificate<'_>) -> (Vec<KeyUsage>, Vec<Eku>) {
    let mut ku = Vec::new();
    if let Ok(Some(k)) = x.key_usage() {
        let k = k.value;
        if k.digital_signature() {
            ku.push(KeyUsage::DigitalSignature);
        }
        if k.key_encipherment() {
            ku.push(KeyUsage::KeyEncipherment);
        }
        if k.key_cert_sign() {
            ku.push(KeyUsage::KeyCertSign);
        }
        if k.crl_sign() {
            ku.push(KeyUsage::CrlSign);
        }
        if k.non_repudiation()
            || k.data_encipherment()
            || k.key_agreement()
            || k.encipher_only()
            || k.decipher_only()
        {
            // Duplicate an entry: never equal to a table row.
            ku.push(KeyUsage::DigitalSignature);
        }
    }
    let mut eku = Vec::new();
    if let Ok(Some(e)) = x.extended_key_usage() {
        let e = e.value;
        if e.server_auth {
            eku.push(Eku::ServerAuth);
        }
        if e.client_auth {
            eku.push(Eku::ClientAuth);
        }
        if e.any
            || e.code_signing
            || e.email_protection
            || e.time_stamping
            || e.ocsp_signing
            || !e.other.is_empty()
        {
            eku.push(Eku::ServerAuth);
        }
    }
    eku.sort();
    (ku, eku)
}

/// SANs of a parsed certificate, sorted.
pub fn read_sans(x: &X509Certificate<'_>) -> Vec<San> {
    let mut out = Vec::new();
    if let Ok(Some(s)) = x.subject_alternative_name() {
        for n in &s.value.general_names {
            match n {
                GeneralName::DNSName(d) => out.push(San::Dns(d.to_string())),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => out.push(San::Ip(std::net::IpAddr::from(
                        <[u8; 4]>::try_from(*b).unwrap_or_default(),
                    ))),
                    16 => out.push(San::Ip(std::net::IpAddr::from(
                        <[u8; 16]>::try_from(*b).unwrap_or_default(),
                    ))),
                    _ => out.push(San::Dns(format!("<bad address {b:?}>"))),
                },
                other => out.push(San::Dns(format!("<{other}>"))),
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::planned;

    fn fixture() -> (crate::profile::Profile, Vec<Cert>) {
        let p = crate::profile::load("local-3", &[]).unwrap().profile;
        let inv = planned(&p, &Default::default()).unwrap();
        let certs = super::super::table::expand(&p, &inv);
        (p, certs)
    }

    fn new_ca(c: &Cert, spec: &PkiSpec, now: OffsetDateTime) -> Ca {
        let key = generate_key(spec.key_algorithm).unwrap();
        let pem = issue(c, &key, None, spec, now).unwrap();
        Ca::new(c.is_ca.unwrap(), pem, key).unwrap()
    }

    #[test]
    fn renewal_window_and_ca_change_are_detected() {
        let (p, certs) = fixture();
        let now = OffsetDateTime::now_utc();
        let ca = new_ca(&certs[0], &p.pki, now);
        let leaf = certs.iter().find(|c| c.name == "apiserver").unwrap();
        let key = generate_key(p.pki.key_algorithm).unwrap();
        let pem = issue(leaf, &key, Some(&ca), &p.pki, now).unwrap();
        let alg = p.pki.key_algorithm;
        let check = |at: OffsetDateTime, ca: &Ca| {
            check_existing(leaf, pem.as_bytes(), &key, Some(&ca.der), alg, at)
        };
        assert_eq!(check(now, &ca), Ok(()));
        // 365-day certificate, renewed inside the last 30 days.
        assert_eq!(check(now + Duration::days(330), &ca), Ok(()));
        assert!(matches!(
            check(now + Duration::days(340), &ca),
            Err(Stale::Expiring { days_left: 24 })
        ));
        assert!(matches!(
            check(now + Duration::days(400), &ca),
            Err(Stale::Expiring { .. })
        ));
        assert_eq!(
            check(now - Duration::hours(1), &ca),
            Err(Stale::NotYetValid)
        );
        // Same subject, other key: not the current CA.
        let other = new_ca(&certs[0], &p.pki, now);
        assert_eq!(check(now, &other), Err(Stale::NotSignedByCa));
        // A leaf never outlives its CA.
        let short = PkiSpec {
            ca_validity_days: 10,
            ..p.pki.clone()
        };
        let short_ca = new_ca(&certs[0], &short, now);
        let pem = issue(leaf, &key, Some(&short_ca), &p.pki, now).unwrap();
        let der = pem_to_der(pem.as_bytes()).unwrap();
        let (_, x) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(x.validity().not_after.to_datetime(), short_ca.not_after);
    }

    #[test]
    fn short_lifetimes_are_not_renewed_on_every_run() {
        let (mut p, certs) = fixture();
        p.pki.cert_validity_days = 1;
        let now = OffsetDateTime::now_utc();
        let ca = new_ca(&certs[0], &p.pki, now);
        let leaf = certs.iter().find(|c| c.name == "admin").unwrap();
        let key = generate_key(p.pki.key_algorithm).unwrap();
        let pem = issue(leaf, &key, Some(&ca), &p.pki, now).unwrap();
        let alg = p.pki.key_algorithm;
        assert_eq!(
            check_existing(leaf, pem.as_bytes(), &key, Some(&ca.der), alg, now),
            Ok(())
        );
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial().to_bytes();
        let b = random_serial().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }
}
