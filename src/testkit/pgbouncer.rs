//! A real PgBouncer (Debian's `pgbouncer` package) in transaction mode in
//! front of the shared test cluster, for the tests of SPEC §6 ("Behind
//! PgBouncer"). It listens on `127.0.0.1` on a free port and reaches
//! PostgreSQL over the cluster's Unix socket; when root it runs as
//! `postgres`, the user that owns that socket (PgBouncer refuses root).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{Cluster, TestDatabase};

/// Server connections PgBouncer opens per database and user.
pub const POOL_SIZE: u32 = 10;

/// A running PgBouncer; stopped when dropped.
pub struct PgBouncer {
    child: Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts one in front of `cluster`, waiting until it accepts connections.
    pub fn start(cluster: &Cluster) -> PgBouncer {
        let dir = tempfile::Builder::new()
            .prefix("chatpool-pgbouncer-")
            .tempdir()
            .expect("a directory for PgBouncer");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let port = free_port();
        let socket = cluster.socket_dir();
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let ini = format!(
            "[databases]\n\
             * = host={socket} port=5432\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             admin_users = chatpool\n\
             pool_mode = transaction\n\
             default_pool_size = {POOL_SIZE}\n\
             max_client_conn = 1000\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {log}\n",
            socket = socket.display(),
            users = path("userlist.txt"),
            log = path("pgbouncer.log"),
        );
        std::fs::write(dir.path().join("userlist.txt"), "\"chatpool\" \"\"\n").expect("userlist");
        std::fs::write(dir.path().join("pgbouncer.ini"), ini).expect("pgbouncer.ini");
        let mut cmd = Command::new(binary());
        cmd.arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("the postgres user (PgBouncer refuses to run as root)");
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let child = cmd.spawn().expect("start pgbouncer");
        let bouncer = PgBouncer { child, port, dir };
        bouncer.wait_until_listening();
        bouncer
    }

    /// A URL to `db` through this PgBouncer, in chatpool's PgBouncer mode.
    pub fn url(&self, db: &TestDatabase) -> String {
        format!(
            "postgres://chatpool@127.0.0.1:{}/{}?pgbouncer=true",
            self.port, db.name
        )
    }

    /// Backend pids of PgBouncer's server connections (its `SHOW SERVERS`).
    pub async fn server_pids(&self) -> Vec<i32> {
        let url = format!(
            "postgres://chatpool@127.0.0.1:{}/pgbouncer?sslmode=disable",
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("PgBouncer's admin console");
        tokio::spawn(conn);
        let rows = client
            .simple_query("SHOW SERVERS")
            .await
            .expect("SHOW SERVERS");
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    row.get("remote_pid").and_then(|p| p.parse().ok())
                }
                _ => None,
            })
            .collect()
    }

    /// Its log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not start listening: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pgbouncer` on PATH, else Debian's `/usr/sbin/pgbouncer`.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("pgbouncer"))
            .find(|p| p.is_file())
    });
    let found = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/pgbouncer"));
    assert!(
        Path::new(&found).is_file(),
        "pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run does)"
    );
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
