//! The example cluster: a gateway with discovery, breakers and retries in front of live,
//! failing instances. Nothing to install; everything listens on 127.0.0.1.
//!
//! ```sh
//! cargo run --example cluster                      # run it; Ctrl-C stops it gracefully
//! cargo run --example cluster -- --demo            # 45 s of load and chaos, then a verdict
//! cargo run --example cluster -- --help            # every flag
//! ```
//!
//! Three services (`auth`, `users`, `documents`), three instances each on ephemeral ports,
//! register in an in-process registry and send heartbeats; the gateway on 127.0.0.1:8080
//! routes `/<service>/<path>` through one `seawall::Upstream` per service and checks the
//! caller's token with `auth` first.

// The modules are shared with the integration tests and the gateway benchmark, which each
// use a different part of them.
#[allow(dead_code, unreachable_pub)]
mod demo;
#[allow(dead_code, unreachable_pub)]
mod gateway;
#[allow(dead_code, unreachable_pub)]
mod instance;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use seawall::BoxError;
use seawall::balance::Picker;
use seawall::discover::{Instance, Polling, Registry};

use crate::gateway::{ClusterFile, Fleet, GatewayConfig, Routing};
use crate::instance::{Cluster, Directory};

// The gateway allocates a little per request (header maps, a retry's copy of the request);
// glibc's allocator spent ~8 % of the gateway's CPU in a profile, mimalloc a fraction of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HELP: &str = "\
seawall example cluster

USAGE
  cargo run --example cluster [-- OPTIONS]

MODES
  (default)              registry + auth/users/documents x3 + gateway; Ctrl-C stops
  --demo                 the same, plus load and a chaos script, a live table and a verdict
                         (exit 0 only if >= 99.9 % of idempotent requests succeeded)
  --gateway-only         just the gateway, in front of --backends or --discovery-file
                         (every path goes to that one upstream; no token check)

OPTIONS
  --config PATH          settings file (TOML); flags override it [examples/cluster/cluster.toml
                         when it exists, except with --gateway-only]
  --no-config            ignore examples/cluster/cluster.toml
  --listen ADDR          gateway address [127.0.0.1:8080]
  --picker NAME          rr | lc | p2c [p2c]
  --instances N          instances per service [3]
  --etcd URL             register and discover through etcd at URL (e.g. http://127.0.0.1:2379)
                         instead of the in-process registry; needs --features etcd
  --duration D           demo length [45s]
  --clients N            demo concurrent clients [16]
  --backends A,B,...     gateway-only: backend addresses [$BACKENDS]
  --discovery-file PATH  gateway-only: one address a line, re-read every second [$DISCOVERY_FILE]
  --attempts N           tries per request, the first included [3]
  --per-try-timeout D    [300ms; gateway-only: $UPSTREAM_RESPONSE_TIMEOUT_S or 5s]
  --connect-timeout D    [1s; gateway-only: $UPSTREAM_CONNECT_TIMEOUT_S or 1s]
  --deadline D           whole request, retries included [2s; gateway-only: attempts x per-try]
  --hedge-after D        send an idempotent request that has not answered to a second
                         instance after D, first answer wins; 0 turns hedging off [200ms]
  --body-cap BYTES       largest request body, else 413 [1048576]
  --header-read-timeout D  time a connection may wait for a complete request head, idle
                         keep-alive included (cut between 1x and 1.5x) [5s]
  --workers N            gateway threads, one runtime each [CPUs this process may use]

Durations: 250ms, 5s, 1.5s, or a bare number of seconds.";

/// Parsed command line.
#[derive(Debug)]
struct Args {
    demo: bool,
    gateway_only: bool,
    duration: Duration,
    clients: usize,
    instances: usize,
    backends: Option<String>,
    discovery_file: Option<String>,
    workers: Option<usize>,
    etcd: Option<String>,
    config: GatewayConfig,
    /// The configuration file read, if any.
    config_file: Option<std::path::PathBuf>,
    deadline_set: bool,
}

fn duration(value: &str) -> Result<Duration, String> {
    let parsed = if let Some(ms) = value.strip_suffix("ms") {
        ms.parse::<f64>().map(|ms| ms / 1000.0)
    } else {
        value.strip_suffix('s').unwrap_or(value).parse::<f64>()
    };
    match parsed {
        Ok(secs) if (0.0..1e9).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{value:?} is not a duration (try 250ms, 5s or 1.5)"
        )),
    }
}

fn env_secs(name: &str) -> Option<Duration> {
    std::env::var(name).ok().and_then(|v| duration(&v).ok())
}

/// The file read when no `--config` is given, if it exists.
const DEFAULT_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster/cluster.toml");

fn parse_args(argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let argv: Vec<String> = argv.collect();
    // The file first (an explicit --config, else the example's cluster.toml unless the
    // gateway runs alone or --no-config), then the flags over it.
    let explicit = argv
        .iter()
        .position(|a| a == "--config")
        .map(|i| argv.get(i + 1).cloned().ok_or("--config needs a value"))
        .transpose()?;
    let skip_default = argv
        .iter()
        .any(|a| a == "--gateway-only" || a == "--no-config");
    let path = match explicit {
        Some(path) => Some(std::path::PathBuf::from(path)),
        None if !skip_default && std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Some(DEFAULT_CONFIG.into())
        }
        None => None,
    };
    let file = match &path {
        Some(path) => ClusterFile::load(path)?,
        None => ClusterFile::default(),
    };
    let mut args = parse_flags(argv.into_iter(), file)?;
    args.config_file = path;
    Ok(args)
}

fn parse_flags(mut argv: impl Iterator<Item = String>, file: ClusterFile) -> Result<Args, String> {
    let mut args = Args {
        demo: false,
        gateway_only: false,
        duration: Duration::from_secs(45),
        clients: 16,
        instances: file.instances.unwrap_or(3).clamp(1, 20),
        backends: None,
        discovery_file: None,
        etcd: file.etcd,
        workers: None,
        config: file.gateway,
        deadline_set: false,
        config_file: None,
    };
    let mut per_try_set = false;
    let mut connect_set = false;
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--config" => {
                value()?;
            }
            "--no-config" => {}
            "--demo" => args.demo = true,
            "--gateway-only" => args.gateway_only = true,
            "--listen" => {
                let v = value()?;
                args.config.listen = v
                    .parse()
                    .map_err(|_| format!("--listen: {v:?} is not an address"))?;
            }
            "--picker" => {
                let v = value()?;
                v.parse::<Picker>().map_err(|e| format!("--picker: {e}"))?;
                args.config.picker = v;
            }
            "--instances" => args.instances = number(value()?)?.clamp(1, 20),
            "--duration" => args.duration = duration(&value()?)?,
            "--clients" => args.clients = number(value()?)?.clamp(1, 1024),
            "--backends" => args.backends = Some(value()?),
            "--discovery-file" => args.discovery_file = Some(value()?),
            "--etcd" => args.etcd = Some(value()?),
            "--attempts" => args.config.attempts = number(value()?)?.clamp(1, 10) as u32,
            "--per-try-timeout" => {
                args.config.per_try_timeout = duration(&value()?)?;
                per_try_set = true;
            }
            "--connect-timeout" => {
                args.config.connect_timeout = duration(&value()?)?;
                connect_set = true;
            }
            "--deadline" => {
                args.config.deadline = duration(&value()?)?;
                args.deadline_set = true;
            }
            "--hedge-after" => {
                let delay = duration(&value()?)?;
                args.config.hedge_after = (!delay.is_zero()).then_some(delay);
            }
            "--body-cap" => args.config.body_cap = number(value()?)?,
            "--header-read-timeout" => args.config.header_read_timeout = duration(&value()?)?,
            "--workers" => args.workers = Some(number(value()?)?.clamp(1, 256)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.gateway_only {
        args.config.routing = Routing::Single;
        args.backends = args.backends.or_else(|| std::env::var("BACKENDS").ok());
        args.discovery_file = args
            .discovery_file
            .or_else(|| std::env::var("DISCOVERY_FILE").ok());
        if args.backends.is_none() && args.discovery_file.is_none() {
            return Err("--gateway-only needs --backends or --discovery-file".into());
        }
        if !per_try_set {
            args.config.per_try_timeout =
                env_secs("UPSTREAM_RESPONSE_TIMEOUT_S").unwrap_or(Duration::from_secs(5));
        }
        if !connect_set {
            args.config.connect_timeout =
                env_secs("UPSTREAM_CONNECT_TIMEOUT_S").unwrap_or(Duration::from_secs(1));
        }
        if !args.deadline_set {
            args.config.deadline = args.config.per_try_timeout * args.config.attempts;
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) if message.is_empty() => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    // The instances, the registry and the demo's clients run here; the gateway runs on its
    // own threads (see `gateway::Fleet`).
    let runtime = if args.gateway_only {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, BoxError> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ])?
        .install_recorder()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let drain = Duration::from_secs(10);

    if args.gateway_only {
        let file = args.discovery_file.clone();
        let fixed = args.backends.clone().unwrap_or_default();
        let fleet = Fleet::start(
            args.config.clone(),
            workers,
            move || vec![("backend".to_owned(), backends(file.clone(), fixed.clone()))],
            Some(prometheus),
            None,
            drain,
        )?;
        println!(
            "seawall gateway on http://{} ({workers} workers, picker {}, {} attempts, per try {:?}, connect {:?})",
            fleet.addr,
            args.config.picker,
            args.config.attempts,
            args.config.per_try_timeout,
            args.config.connect_timeout
        );
        ctrl_c().await;
        fleet.shutdown().await;
        return Ok(ExitCode::SUCCESS);
    }

    let directory = directory(args.etcd.as_deref())?;
    let cluster = Arc::new(Cluster::start(directory.clone(), args.instances).await?);
    let watch = directory.clone();
    let fleet = Fleet::start(
        args.config.clone(),
        workers,
        move || {
            Cluster::SERVICES
                .iter()
                .map(|s| (s.to_string(), watch.watch(s)))
                .collect()
        },
        Some(prometheus),
        Some(Arc::clone(&cluster)),
        if args.demo {
            Duration::from_secs(5)
        } else {
            drain
        },
    )?;
    let addr = fleet.addr;
    for node in &cluster.nodes {
        if let Some(node_addr) = node.addr() {
            println!("  {:<12} {node_addr}", node.id);
        }
    }
    println!(
        "seawall gateway on http://{addr} ({workers} workers, picker {})",
        args.config.picker
    );
    match &args.config_file {
        Some(path) => println!("settings from {} (flags override it)", path.display()),
        None => println!("built-in settings (no cluster.toml)"),
    }

    if args.demo {
        let passed = demo::run(
            addr,
            &fleet,
            Arc::clone(&cluster),
            args.duration,
            args.clients,
        )
        .await?;
        fleet.shutdown().await;
        cluster.stop();
        return Ok(if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    println!(
        "\ntry it:\n\
         \x20 TOKEN=$(curl -s -X POST http://{addr}/auth/login -d '{{\"username\":\"alice\",\"password\":\"wonderland\"}}' | sed 's/.*\"token\":\"\\([0-9a-f]*\\)\".*/\\1/')\n\
         \x20 curl -H \"Authorization: Bearer $TOKEN\" http://{addr}/users/42\n\
         \x20 curl http://{addr}/admin/instances\n\
         \x20 curl -X POST http://{addr}/admin/instances/users-2/kill   # also restart, slow?ms=500, fail?rate=0.5, hang, heal\n\
         \x20 curl http://{addr}/metrics\n\
         Ctrl-C stops (in-flight requests finish first)."
    );
    ctrl_c().await;
    fleet.shutdown().await;
    cluster.stop();
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handler: run until killed.
        std::future::pending::<()>().await;
    }
    println!("\nshutting down: no new connections, letting in-flight requests finish");
}

/// Gateway-only discovery: the backends file, re-read every second (a read or parse error
/// keeps the last good set), or the fixed list.
/// The in-process registry, or etcd at `url`.
fn directory(etcd: Option<&str>) -> Result<Directory, BoxError> {
    match etcd {
        None => Ok(Registry::new().into()),
        #[cfg(feature = "etcd")]
        Some(url) => {
            println!("registering and discovering through etcd at {url}");
            Ok(Directory::Etcd(seawall::discover::etcd::EtcdConfig::new([
                url,
            ])))
        }
        #[cfg(not(feature = "etcd"))]
        Some(_) => Err("--etcd needs the `etcd` feature: \
             cargo run --example cluster --features etcd -- --etcd http://127.0.0.1:2379 \
             (building it needs protoc: apt-get install protobuf-compiler libprotobuf-dev)"
            .into()),
    }
}

fn backends(
    file: Option<String>,
    fixed: String,
) -> impl futures_core::Stream<
    Item = Result<tower::discover::Change<String, Instance>, std::convert::Infallible>,
> {
    Polling::new("backends", Duration::from_secs(1), move || {
        let file = file.clone();
        let fixed = fixed.clone();
        async move {
            let text = match file {
                Some(path) => tokio::fs::read_to_string(&path)
                    .await
                    .map_err(|e| format!("cannot read {path}: {e}"))?,
                None => fixed.replace(',', "\n"),
            };
            parse_backends(&text)
        }
    })
}

/// One `host:port` a line (or comma-separated); blank lines and `#` comments are skipped.
fn parse_backends(text: &str) -> Result<Vec<(String, Instance)>, BoxError> {
    let mut backends = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let addr: SocketAddr = line
            .parse()
            .map_err(|_| format!("{line:?} is not an address like 127.0.0.1:8081"))?;
        backends.push((line.to_owned(), Instance::new(line, addr)));
    }
    Ok(backends)
}
