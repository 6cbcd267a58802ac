//! Issue 12: the container files. CI has no Docker engine, so these read
//! `docker-compose.yml` and the `Dockerfile` and check what must hold for
//! `docker compose up` to work and to be safe; `.ci/docker-context --build`
//! builds exactly the files the image's build context holds.

use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

/// chatpool's `CHATPOOL_SHUTDOWN_TIMEOUT_MS` when a service does not set it.
const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;

fn read(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Yaml {
    YamlLoader::load_from_str(&read("docker-compose.yml"))
        .expect("docker-compose.yml is YAML")
        .remove(0)
}

fn services(doc: &Yaml) -> Vec<(String, Yaml)> {
    doc["services"]
        .as_hash()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

fn is_chatpool(service: &Yaml) -> bool {
    !service["build"].is_badvalue() || service["image"].as_str() == Some("chatpool:local")
}

fn env<'a>(service: &'a Yaml, name: &str) -> Option<&'a str> {
    service["environment"][name].as_str()
}

/// `name=value` from a URL's query string.
fn url_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn replicas(service: &Yaml) -> u64 {
    service["deploy"]["replicas"]
        .as_i64()
        .map_or(1, |n| n as u64)
}

/// `-c name=value` from the database service's command.
fn server_setting(db: &Yaml, name: &str) -> Option<u64> {
    let words: Vec<&str> = db["command"]
        .as_vec()
        .expect("the db command as a list")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    words
        .iter()
        .filter_map(|w| w.strip_prefix(&format!("{name}=")))
        .find_map(|v| v.parse().ok())
}

#[test]
fn every_service_has_a_healthcheck() {
    let doc = compose();
    for (name, service) in services(&doc) {
        let test = &service["healthcheck"]["test"];
        assert!(
            test.as_vec().is_some_and(|t| !t.is_empty()),
            "{name} has no healthcheck"
        );
        if is_chatpool(&service) {
            let cmd = format!("{test:?}");
            assert!(cmd.contains("/readyz"), "{name} checks {cmd}");
        }
    }
}

#[test]
fn every_chatpool_service_gets_longer_to_stop_than_its_shutdown_deadline() {
    let doc = compose();
    let mut seen = 0;
    for (name, service) in services(&doc).into_iter().filter(|(_, s)| is_chatpool(s)) {
        seen += 1;
        let deadline = env(&service, "CHATPOOL_SHUTDOWN_TIMEOUT_MS")
            .map_or(DEFAULT_SHUTDOWN_TIMEOUT_MS, |v| v.parse().unwrap());
        let grace = service["stop_grace_period"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no stop_grace_period (Docker's is 10 s)"));
        let grace = humantime::parse_duration(grace).unwrap();
        assert!(
            grace > Duration::from_millis(deadline),
            "{name}: stop_grace_period {grace:?} does not exceed the {deadline} ms shutdown"
        );
    }
    assert!(seen >= 3, "the default, pgbouncer and scale chatpools");
}

#[test]
fn every_profile_together_stays_within_the_databases_connection_budget() {
    let doc = compose();
    let db = &doc["services"]["db"];
    let max = server_setting(db, "max_connections").expect("max_connections set");
    let reserved = server_setting(db, "superuser_reserved_connections").unwrap_or(3);
    let mut budget = 0;
    for (name, service) in services(&doc) {
        if is_chatpool(&service) {
            let url = env(&service, "DATABASE_URL").unwrap_or_else(|| panic!("{name} URL"));
            let limit: u64 = url_param(url, "connection_limit")
                .unwrap_or_else(|| panic!("{name} sets no connection_limit"))
                .parse()
                .unwrap();
            budget += limit * replicas(&service);
        } else if let Some(pool) = env(&service, "DEFAULT_POOL_SIZE") {
            let reserve = env(&service, "RESERVE_POOL_SIZE").map_or(0, |v| v.parse().unwrap());
            budget += pool.parse::<u64>().unwrap() + reserve;
        }
    }
    assert!(
        budget < max - reserved,
        "{budget} connections at most, {max} - {reserved} available"
    );
}

#[test]
fn the_database_password_comes_from_a_variable_never_a_literal() {
    let doc = compose();
    let db = &doc["services"]["db"];
    let password = env(db, "POSTGRES_PASSWORD").expect("POSTGRES_PASSWORD");
    assert!(password.starts_with("${POSTGRES_PASSWORD"), "{password}");
    assert!(
        password.contains(":?"),
        "required, with no default: {password}"
    );
    for (name, service) in services(&doc) {
        for (key, value) in service["environment"].as_hash().into_iter().flatten() {
            let (key, value) = (key.as_str().unwrap(), value.as_str().unwrap_or(""));
            if key.ends_with("DATABASE_URL") {
                let userinfo = value
                    .split_once("://")
                    .unwrap()
                    .1
                    .split_once('@')
                    .unwrap()
                    .0;
                let secret = userinfo.split_once(':').map_or("", |(_, p)| p);
                assert_eq!(secret, "${POSTGRES_PASSWORD}", "{name} {key}");
            }
            if key.ends_with("PASSWORD") {
                assert!(value.starts_with("${POSTGRES_PASSWORD"), "{name} {key}");
            }
        }
    }
}

#[test]
fn metrics_are_served_apart_and_published_on_loopback_only() {
    let doc = compose();
    for (name, service) in services(&doc).into_iter().filter(|(_, s)| is_chatpool(s)) {
        let metrics = env(&service, "CHATPOOL_METRICS_LISTEN")
            .unwrap_or_else(|| panic!("{name}: /metrics would share the public port"));
        let port = metrics.rsplit_once(':').unwrap().1;
        for mapping in service["ports"].as_vec().into_iter().flatten() {
            let mapping = mapping.as_str().unwrap();
            if mapping.ends_with(&format!(":{port}")) {
                assert!(
                    mapping.starts_with("127.0.0.1:"),
                    "{name} publishes metrics as {mapping}"
                );
            }
        }
    }
}

#[test]
fn the_image_builds_from_the_whole_allowlisted_context_as_a_non_root_user() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    // The build copies the context, never a hand-kept list of paths.
    let copies: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("COPY") && !l.contains("--from="))
        .collect();
    assert_eq!(copies, [&"COPY . ."], "{copies:?}");
    assert!(
        dockerfile.contains("--mount=type=cache"),
        "no dependency cache"
    );
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );
    assert!(lines.iter().any(|l| l.starts_with("HEALTHCHECK")));
    // The context is an allowlist, and holds everything Cargo.toml names.
    let ignore = read(".dockerignore");
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(entries[0], "*");
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "migrations",
        "benches",
        "console",
    ] {
        assert!(entries.contains(&format!("!{needed}").as_str()), "{needed}");
    }
}
