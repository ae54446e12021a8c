//! ZooKeeper TLS and SASL DIGEST-MD5 against a real ZooKeeper (Debian's 3.8): certificates
//! the test makes with openssl, a server with `secureClientPort` and client certificates
//! required, a server with a JAAS user list; our sessions, tools and a running agent over
//! each, and the clients that must be refused.

use std::{path::Path, process::Command, time::Duration};

use crate::support::{repo_root, zk::ZkServer};
use fleetmeter::coord::{CoordError, Session, ZkAuth, ZkSettings, access::ZkTls};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1, a client certificate, and a second CA nobody
/// trusts; ZooKeeper's PEM keystore (key then certificate).
fn certificates(dir: &Path) {
    let key = |name: &str| {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &format!("{name}.key"),
            ],
        )
    };
    for ca in ["ca", "rogue-ca"] {
        key(ca);
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
            ],
        );
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    // Version 3 certificates (extensions make them so): webpki accepts no other.
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("rogue-client", "rogue-ca", "client.ext"),
    ] {
        key(name);
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let args = vec![
            "x509".to_owned(),
            "-req".into(),
            "-in".into(),
            format!("{name}.csr"),
            "-CA".into(),
            format!("{ca}.pem"),
            "-CAkey".into(),
            format!("{ca}.key"),
            "-CAcreateserial".into(),
            "-out".into(),
            format!("{name}.pem"),
            "-days".into(),
            "2".into(),
            "-extfile".into(),
            ext.into(),
        ];
        openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "server.key",
            "-out",
            "server.p8",
        ],
    );
    let keystore = std::fs::read_to_string(dir.join("server.p8")).unwrap()
        + &std::fs::read_to_string(dir.join("server.pem")).unwrap();
    std::fs::write(dir.join("keystore.pem"), keystore).unwrap();
}

fn settings(hosts: String, auth: Option<&str>, tls: Option<ZkTls>) -> ZkSettings {
    let auth: Option<ZkAuth> = auth.map(|a| a.parse().unwrap());
    ZkSettings {
        connect_timeout: Duration::from_secs(5),
        auth,
        tls,
        ..ZkSettings::new(hosts, "/fleetmeter")
    }
}

/// Starts `fleetmeter run ID` with `env`; it must join the fleet (its device node appears,
/// seen through `observer`).
async fn agent_joins(observer: &Session, id: &str, env: &[(&str, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args(["run", id, "--config"])
        .arg(repo_root().join("agent.toml"))
        .env("FLEETMETER_PLUGIN_DIR", repo_root().join("plugins/dist"))
        .env("FLEETMETER_CACHE_DIR", crate::support::cache_dir())
        .env("FLEETMETER_METRICS_LISTEN", "off")
        .env("API_URL", "http://127.0.0.1:9/")
        .env_remove("FLEETMETER_ZK_AUTH")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let client = observer.client().unwrap();
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if client
                .check_stat(&fleetmeter::coord::paths::device(id))
                .await
                .is_ok_and(|s| s.is_some())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(joined.is_ok(), "agent {id} did not join: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_only_with_them() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let zk = ZkServer::start_tls(
        &certs.path().join("keystore.pem"),
        &certs.path().join("ca.pem"),
    );
    let file = |name: &str| certs.path().join(name);
    let tls = ZkTls::read(
        &file("ca.pem"),
        Some(&file("client.pem")),
        Some(&file("client.key")),
    )
    .unwrap();
    let auth = "digest:fleet:tls-and-digest";
    let session = Session::connect(settings(zk.secure_hosts(), Some(auth), Some(tls.clone())))
        .await
        .expect("a session over TLS with a client certificate");
    let client = session.client().unwrap();
    client
        .create("/probe", b"over tls", &client.persistent())
        .await
        .unwrap();
    assert_eq!(client.get_data("/probe").await.unwrap().0, b"over tls");

    // Refused: no client certificate, a certificate of another CA, a server nobody vouches
    // for, and plaintext on the TLS port.
    let refused = [
        (
            "no client certificate",
            ZkTls::read(&file("ca.pem"), None, None).unwrap(),
        ),
        (
            "a client certificate of another CA",
            ZkTls::read(
                &file("ca.pem"),
                Some(&file("rogue-client.pem")),
                Some(&file("rogue-client.key")),
            )
            .unwrap(),
        ),
        (
            "a server certificate this client does not trust",
            ZkTls::read(
                &file("rogue-ca.pem"),
                Some(&file("client.pem")),
                Some(&file("client.key")),
            )
            .unwrap(),
        ),
    ];
    for (what, tls) in refused {
        let attempt = Session::connect(settings(zk.secure_hosts(), Some(auth), Some(tls))).await;
        assert!(
            matches!(
                attempt,
                Err(CoordError::Unreachable { .. } | CoordError::Zk { .. })
            ),
            "{what}: {attempt:?}"
        );
    }
    let plaintext = Session::connect(settings(zk.secure_hosts(), Some(auth), None)).await;
    assert!(plaintext.is_err(), "plaintext on the TLS port");

    // The tools and a running agent, over TLS.
    let tls_env = [
        ("FLEETMETER_ZK_TLS_CA", file("ca.pem").display().to_string()),
        (
            "FLEETMETER_ZK_TLS_CERT",
            file("client.pem").display().to_string(),
        ),
        (
            "FLEETMETER_ZK_TLS_KEY",
            file("client.key").display().to_string(),
        ),
        ("FLEETMETER_ZK_AUTH", auth.to_owned()),
        ("ZK_HOST", zk.secure_hosts()),
    ];
    agent_joins(&session, "tls-1", &tls_env).await;
    let status = Command::new(env!("CARGO_BIN_EXE_fleetmeter"))
        .args([
            "config",
            "get",
            "sampling_period",
            "--zk",
            &zk.secure_hosts(),
        ])
        .envs(tls_env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "5");
    drop(client);
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_digest_md5_identifies_the_fleet_and_refuses_a_wrong_password() {
    let zk = ZkServer::start_sasl(&[("fleet", "sasl-secret"), ("other", "other-secret")]);
    let session = Session::connect(settings(zk.hosts(), Some("sasl:fleet:sasl-secret"), None))
        .await
        .expect("a SASL session");
    let client = session.client().unwrap();
    let (acl, _) = client.get_acl("/").await.unwrap();
    assert_eq!(
        fleetmeter::coord::access::describe(&acl),
        "sasl:fleet ALL",
        "the root belongs to the SASL identity"
    );
    client
        .create("/probe", b"x", &client.persistent())
        .await
        .unwrap();

    let wrong = Session::connect(settings(zk.hosts(), Some("sasl:fleet:guess"), None)).await;
    assert!(wrong.is_err(), "a wrong SASL password: {wrong:?}");
    let other = Session::connect(settings(zk.hosts(), Some("sasl:other:other-secret"), None)).await;
    assert!(
        matches!(other, Err(CoordError::NoAccess { .. })),
        "another SASL user has no access to the fleet: {other:?}"
    );
    let anonymous = Session::connect(settings(zk.hosts(), None, None)).await;
    assert!(
        matches!(anonymous, Err(CoordError::NoAccess { .. })),
        "{anonymous:?}"
    );

    agent_joins(
        &session,
        "sasl-1",
        &[
            ("FLEETMETER_ZK_AUTH", "sasl:fleet:sasl-secret".to_owned()),
            ("ZK_HOST", zk.hosts()),
        ],
    )
    .await;
    drop(client);
    session.close().await;
}
