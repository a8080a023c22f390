//! A real Redis (Debian's `redis-server`) on a free loopback port, started
//! for one test and stopped when dropped. `scripts/test.sh` installs it; a
//! test that needs it fails, rather than skips, without it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// What redis-cli needs besides the port (`--tls --cacert CA` for a TLS-only server).
    cli_args: Vec<String>,
}

impl Redis {
    /// Starts a Redis without persistence on a free port and waits for PING.
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// Starts a Redis without persistence on `port` and waits for PING.
    pub fn start_on(port: u16) -> Redis {
        let mut redis = Redis::stopped(port);
        redis.resume();
        redis
    }

    /// A Redis on `port` with its own empty directory, not started yet.
    fn stopped(port: u16) -> Redis {
        let dir =
            std::env::temp_dir().join(format!("stompede-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Redis {
            port,
            dir,
            child: None,
            cli_args: Vec::new(),
        }
    }

    /// A Redis that speaks only TLS (`--port 0 --tls-port PORT`) with the
    /// server certificate of `certificates`, asking clients for one signed
    /// by the CA when `client_certificates` is true.
    pub fn start_tls(certificates: &Certificates, client_certificates: bool) -> Redis {
        let port = free_port();
        let mut redis = Redis::stopped(port);
        let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
        redis.cli_args = vec!["--tls".into(), "--cacert".into(), path(&certificates.ca)];
        if client_certificates {
            redis.cli_args.extend([
                "--cert".into(),
                path(&certificates.client_cert),
                "--key".into(),
                path(&certificates.client_key),
            ]);
        }
        let auth_clients = if client_certificates { "yes" } else { "no" };
        let (cert, key, ca) = (
            path(&certificates.server_cert),
            path(&certificates.server_key),
            path(&certificates.ca),
        );
        let port = port.to_string();
        redis.run(&[
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth_clients,
        ]);
        redis
    }

    /// A replica of `master` (`--replicaof`) on a free port.
    pub fn start_replica_of(master: &Redis) -> Redis {
        let mut redis = Redis::stopped(free_port());
        let master_port = master.port.to_string();
        redis.resume_with(&["--replicaof", "127.0.0.1", &master_port]);
        redis
    }

    /// `master` or `slave`, from ROLE.
    pub fn role(&self) -> String {
        self.cli(&["ROLE"])
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, so nothing is saved and clients see the link drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn resume(&mut self) {
        self.resume_with(&[]);
    }

    fn resume_with(&mut self, extra: &[&str]) {
        let port = self.port.to_string();
        self.run(&[&["--port", &port][..], extra].concat());
    }

    /// Starts redis-server with `args` (which name its port(s)) and waits for PING.
    fn run(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs Debian's redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, &self.cli_args, args)
    }

    /// Subscribers (connections) of one shard channel on this server, from
    /// PUBSUB SHARDNUMSUB.
    pub fn shard_numsub(&self, channel: &str) -> usize {
        let output = self.cli(&["PUBSUB", "SHARDNUMSUB", channel]);
        output
            .lines()
            .nth(1)
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Subscribers (connections) of one channel, from PUBSUB NUMSUB.
    pub fn numsub(&self, channel: &str) -> usize {
        let output = self.cli(&["PUBSUB", "NUMSUB", channel]);
        output
            .lines()
            .nth(1)
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One Sentinel (`redis-server CONF --sentinel`) watching `master` as
/// `service`, with quorum 1; stopped when dropped.
pub struct Sentinel {
    pub port: u16,
    service: String,
    dir: PathBuf,
    child: Child,
}

impl Sentinel {
    /// Starts it and waits until it knows the master and one replica (so a
    /// failover can promote it).
    pub fn start(service: &str, master: &Redis) -> Sentinel {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("stompede-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Sentinel rewrites its file, so each gets its own.
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {service} 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 10000\n",
                dir = dir.display(),
                master = master.port,
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs as a sentinel");
        let sentinel = Sentinel {
            port,
            service: service.to_owned(),
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let replicas = sentinel.cli(&["SENTINEL", "REPLICAS", service]);
            if replicas.contains("slave") && !replicas.contains("disconnected") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel on {port} never saw a replica of {service}: {replicas:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sentinel
    }

    /// The engine's `redis-url` for the master behind this sentinel.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={}",
            self.port, self.service
        )
    }

    /// Asks for a failover (retrying while no replica is ready for it yet).
    pub fn failover(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.cli(&["SENTINEL", "FAILOVER", &self.service]);
            if answer.trim() == "OK" {
                return;
            }
            assert!(Instant::now() < deadline, "SENTINEL FAILOVER: {answer:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, &[], args)
    }
}

/// Runs one command with redis-cli against `port` (`options` first, such
/// as TLS files) and returns its output.
fn redis_cli(port: u16, options: &[String], args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(options)
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters (no replicas) forming a Redis Cluster: `redis-server
/// --cluster-enabled yes` three times, then `redis-cli --cluster create`.
pub struct RedisCluster {
    pub masters: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut masters = Vec::new();
        for _ in 0..3 {
            let mut redis = Redis::stopped(free_cluster_port());
            redis.resume_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
            masters.push(redis);
        }
        let addresses: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !masters
            .iter()
            .all(|m| m.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster never reached cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { masters }
    }

    /// The hash slot of `key` (its hash tag's, if it has one).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.masters[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The index in `masters` of the master that owns `slot`, as that master
    /// itself says (the `myself` line of its CLUSTER NODES).
    pub fn owner_of(&self, slot: u16) -> usize {
        self.masters
            .iter()
            .position(|master| {
                let nodes = master.cli(&["CLUSTER", "NODES"]);
                let myself = nodes
                    .lines()
                    .find(|line| line.contains("myself"))
                    .expect("CLUSTER NODES names myself");
                myself.split_whitespace().skip(8).any(|range| {
                    let (low, high) = range.split_once('-').unwrap_or((range, range));
                    match (low.parse::<u16>(), high.parse::<u16>()) {
                        (Ok(low), Ok(high)) => (low..=high).contains(&slot),
                        _ => false, // a "[slot->-node]" migration mark
                    }
                })
            })
            .expect("some master owns every slot")
    }

    /// Moves `slot` from its owner to another master the way resharding
    /// does: IMPORTING on the target, MIGRATING on the source, MIGRATE of
    /// the keys in it, then SETSLOT NODE on every master. Returns the
    /// indexes of the old and the new owner.
    pub fn move_slot(&self, slot: u16) -> (usize, usize) {
        let from = self.owner_of(slot);
        let to = (from + 1) % self.masters.len();
        let id = |index: usize| {
            self.masters[index]
                .cli(&["CLUSTER", "MYID"])
                .trim()
                .to_owned()
        };
        let (from_id, to_id) = (id(from), id(to));
        let slot = slot.to_string();
        let ok = |master: usize, args: &[&str]| {
            let reply = self.masters[master].cli(args);
            assert_eq!(reply.trim(), "OK", "{args:?} on master {master}: {reply}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        loop {
            let keys = self.masters[from].cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = self.masters[to].port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(from, &args);
        }
        // The target first, then the source, then the others (as `redis-cli
        // --cluster reshard` does), so that no master ever points back.
        ok(to, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        for other in (0..self.masters.len()).filter(|m| *m != from && *m != to) {
            ok(other, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
        (from, to)
    }

    /// The `redis-cluster://` URL stompede's `redis-url` takes, naming every master.
    pub fn url(&self) -> String {
        let first = &self.masters[0];
        let others: Vec<String> = self.masters[1..]
            .iter()
            .map(|m| format!("node=127.0.0.1:{}", m.port))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            first.port,
            others.join("&")
        )
    }
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test CA, a server certificate it signed for 127.0.0.1 (an IP SAN), and
/// a second CA that signed nothing, made with the `openssl` CLI
/// (scripts/test.sh installs it) in a directory removed when dropped.
pub struct Certificates {
    dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

impl Certificates {
    pub fn make() -> Certificates {
        let dir = std::env::temp_dir().join(format!(
            "stompede-tls-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl runs (scripts/test.sh installs it)");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for name in ["ca", "other-ca"] {
            let (key, cert, subject) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("/CN=stompede test {name}"),
            );
            openssl(
                &[
                    &["req", "-x509"][..],
                    &ec,
                    &[
                        "-keyout", &key, "-out", &cert, "-days", "2", "-subj", &subject,
                    ],
                ]
                .concat(),
            );
        }
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        // Extensions make an X.509 v3 certificate, the only version rustls takes.
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let client = [
            &["req"][..],
            &ec,
            &["-keyout", "client.key", "-out", "client.csr"],
        ]
        .concat();
        openssl(&[&client[..], &["-subj", "/CN=stompede node"]].concat());
        openssl(&[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        Certificates {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.pem"),
            dir,
        }
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
