//! A private CA and the certificates TLS tests need, made by Debian's `openssl` in a temp
//! directory: valid ones, one for another name, one that has expired, client certificates.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A CA in `dir`, and the certificates it issues there.
pub struct Pki {
    dir: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian's openssl package; scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA named `name` (P-256, 30 days) in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        // `openssl ca` (for certificates with given dates) keeps a database.
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "1000\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\nserial = {0}/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n",
                dir.display()
            ),
        )
        .unwrap();
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `sans` (`IP:127.0.0.1,DNS:localhost`), valid for 30 days.
    pub fn server(&self, name: &str, sans: &str) -> Issued {
        self.issue(name, sans, "serverAuth", None)
    }

    /// A client certificate, valid for 30 days.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, &format!("DNS:{name}"), "clientAuth", None)
    }

    /// A server certificate for `sans` that expired (valid on 1 January 2020 only).
    pub fn expired(&self, name: &str, sans: &str) -> Issued {
        self.issue(
            name,
            sans,
            "serverAuth",
            Some(("20200101000000Z", "20200102000000Z")),
        )
    }

    fn issue(&self, name: &str, sans: &str, usage: &str, dates: Option<(&str, &str)>) -> Issued {
        let (key, csr, cert, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        match dates {
            None => openssl(
                &self.dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &cert,
                    "-days",
                    "30",
                    "-extfile",
                    &ext,
                ],
            ),
            Some((start, end)) => openssl(
                &self.dir,
                &[
                    "ca",
                    "-batch",
                    "-config",
                    "ca.cnf",
                    "-cert",
                    "ca.pem",
                    "-keyfile",
                    "ca.key",
                    "-notext",
                    "-in",
                    &csr,
                    "-out",
                    &cert,
                    "-startdate",
                    start,
                    "-enddate",
                    end,
                    "-extfile",
                    &ext,
                ],
            ),
        }
        Issued {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }
}
