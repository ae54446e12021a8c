//! What `fleetmeter run --check` prints: the values an agent would run with, secrets hidden.

use super::AgentConfig;

/// What `fleetmeter run --check` prints: the values the agent would run with.
pub fn describe(config: &AgentConfig) -> String {
    let file = config.file.as_ref().map_or_else(
        || "(none: built-in defaults)".to_owned(),
        |p| p.display().to_string(),
    );
    let listen = config
        .telemetry
        .listen
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    let resolve = |name: &str| crate::plugin::resolve(name, &config.plugin_dir);
    format!(
        "configuration OK\n\
         config file:      {file}\n\
         device id:        {}\n\
         zookeeper:        {} (root {}, session timeout {:?})\n\
         zk credentials:   {}\n\
         zk tls:           {}\n\
         sampling period:  {:?}\n\
         api url:          {} (format {}, token {}; allowed origins {})\n\
         sensor:           {}{}\n\
         sensor grants:    {}\n\
         aggregator:       {}\n\
         metrics, health:  {listen}\n",
        config.device_id,
        config.zookeeper.hosts,
        config.zookeeper.root,
        config.zookeeper.session_timeout,
        config.zookeeper.auth.as_ref().map_or_else(
            || "none (an open fleet: anyone who reaches ZooKeeper can change it)".to_owned(),
            |auth| format!(
                "user {:?} (password hidden){}",
                auth.user(),
                if config.zookeeper.public_read {
                    ", public read"
                } else {
                    ""
                }
            )
        ),
        match &config.zookeeper.tls {
            None => "off (plaintext)",
            Some(tls) if tls.has_identity() => "on, with a client certificate",
            Some(_) => "on",
        },
        config.period,
        crate::text::redact_url(&config.publish.api_url),
        config.publish.format.name(),
        if config.publish.token.is_some() {
            "set, hidden"
        } else {
            "none"
        },
        config.publish.allowed_origins.join(", "),
        resolve(&config.sensor).display(),
        config
            .quantity
            .as_ref()
            .map_or_else(String::new, |q| format!(
                " (a one-value sample is named {q})"
            )),
        describe_grants(&config.sensor_settings.grants),
        resolve(&config.aggregator).display(),
    )
}

/// What the sensor is granted, on one line (environment values hidden: they may be tokens).
fn describe_grants(grants: &crate::plugin::Grants) -> String {
    let list = |items: Vec<String>| items.join(", ");
    let mut parts = Vec::new();
    if grants.network {
        parts.push("EVERY address (network = true)".to_owned());
    }
    if !grants.connect.is_empty() {
        parts.push(format!(
            "connect {}",
            list(grants.connect.iter().map(|e| e.to_string()).collect())
        ));
    }
    if !grants.http.is_empty() {
        parts.push(format!(
            "http {}",
            list(grants.http.iter().map(|o| o.to_string()).collect())
        ));
    }
    if !grants.dirs.is_empty() {
        parts.push(format!(
            "dirs {}",
            list(
                grants
                    .dirs
                    .iter()
                    .map(|d| format!("{} (as {})", d.host.display(), d.guest))
                    .collect()
            )
        ));
    }
    if !grants.env.is_empty() {
        parts.push(format!(
            "env {} (values hidden)",
            list(grants.env.iter().map(|(k, _)| k.clone()).collect())
        ));
    }
    if parts.is_empty() {
        "none (no files, environment or network)".to_owned()
    } else {
        crate::text::one_line(&parts.join("; ")).into_owned()
    }
}
