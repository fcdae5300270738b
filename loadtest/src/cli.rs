//! The command line (clap derive) and its translation into a validated `Plan`. Everything a
//! user can get wrong is rejected here, before any connection is made, so that usage errors
//! exit with code 2 and a message that names the flag.

use crate::framing::Framing;
use crate::thresholds::Thresholds;
use crate::units::{parse_duration, parse_positive_rate, parse_rate};
use anyhow::{bail, Context};
use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "stage-loadtest",
    version,
    about = "Bot clients for load-testing a STAGE server (or any server speaking its framings).",
    long_about = "Bot clients for load-testing a STAGE server (or any server speaking its framings).\n\n\
        Opens --connections bots against --target, runs a scenario on each, and reports \
        throughput, latency percentiles, errors and disconnects. Durations take a unit: \
        250us, 5ms, 1.5s, 2m.",
    after_help = "Exit codes: 0 ok, 1 a threshold was violated, 2 usage error or nobody could connect.\n\n\
        Examples:\n  \
        stage-loadtest --target 127.0.0.1:8081 --connections 64 --duration 30s\n  \
        stage-loadtest --target 127.0.0.1:8081 --scenario login-then-echo --messages 1000 --p99-max 5ms\n  \
        stage-loadtest --target 127.0.0.1:8081 --scenario bots.lua --json - --chart run.svg\n  \
        stage-loadtest --target 127.0.0.1:7000 --scenario lotus --messages 1000 --error-max 0"
)]
pub struct Args {
    /// Server address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,

    /// Number of bots (one TCP connection each).
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,

    /// New connections per second (default: all at once).
    #[arg(long, value_name = "RATE", value_parser = parse_positive_rate)]
    pub ramp_up: Option<f64>,

    /// Stop after this long (after the warmup) [default: 10s when --messages is not given].
    #[arg(long, value_name = "TIME", value_parser = parse_duration, conflicts_with = "messages")]
    pub duration: Option<Duration>,

    /// Stop each bot after N messages (built-in scenarios: N echo round trips after any
    /// login; Lua: N received messages).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: Option<u64>,

    /// Pause between a reply and the bot's next message.
    #[arg(long, default_value = "0ms", value_name = "TIME", value_parser = parse_duration)]
    pub think_time: Duration,

    /// Wire framing: packet (4-byte LE length + BSON {"v": {...}}), text (lines) or raw.
    #[arg(long, value_enum, default_value_t = Framing::Packet)]
    pub framing: Framing,

    /// echo, login-then-echo, lobby (players of engine/lua/examples/lobby), lotus (lotus
    /// wire v1 clients: a `call` per message, room channel deliveries), or a Lua bot script
    /// FILE.lua (see the README).
    #[arg(long, default_value = "echo", value_name = "NAME|FILE.lua")]
    pub scenario: String,

    /// Bytes of payload per message in the built-in scenarios.
    #[arg(long, default_value_t = 32, value_name = "BYTES")]
    pub payload_size: usize,

    /// Reply timeout: a bot waiting longer counts a timeout error and is closed. Also the
    /// connect timeout.
    #[arg(long, default_value = "5s", value_name = "TIME", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Time at the start excluded from the statistics (messages and latencies; errors
    /// always count).
    #[arg(long, default_value = "0s", value_name = "TIME", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Write the JSON summary (with the per-second series) to FILE ("-" = stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,

    /// Write a self-contained chart of throughput and p99 per second (FILE.svg or FILE.html).
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,

    /// Threshold: fail (exit 1) if p99 latency is above TIME.
    #[arg(long, value_name = "TIME", value_parser = parse_duration, help_heading = "Thresholds (exit code 1 when violated)")]
    pub p99_max: Option<Duration>,

    /// Threshold: fail (exit 1) if p50 latency is above TIME.
    #[arg(long, value_name = "TIME", value_parser = parse_duration, help_heading = "Thresholds (exit code 1 when violated)")]
    pub p50_max: Option<Duration>,

    /// Threshold: fail (exit 1) if there are more than N errors (any kind, whole run).
    #[arg(
        long,
        value_name = "N",
        help_heading = "Thresholds (exit code 1 when violated)"
    )]
    pub error_max: Option<u64>,

    /// Threshold: fail (exit 1) if throughput is below N messages/s.
    #[arg(long, value_name = "N", value_parser = parse_rate, help_heading = "Thresholds (exit code 1 when violated)")]
    pub min_throughput: Option<f64>,

    /// Worker threads running the bots [default: number of CPUs, at most --connections].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,

    /// How often a Lua scenario's on_tick(bot) runs.
    #[arg(long, default_value = "1s", value_name = "TIME", value_parser = parse_duration)]
    pub tick: Duration,

    /// Largest message accepted from the server (a packet or a line), in bytes.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub max_message: usize,

    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,

    /// Account the lotus bots log in with (the lotus stage's `accounts` block; the account
    /// names the project) [default: bot].
    #[arg(long, value_name = "NAME", help_heading = "lotus scenario")]
    pub lotus_account: Option<String>,

    /// Password of --lotus-account [default: secret].
    #[arg(long, value_name = "PASSWORD", help_heading = "lotus scenario")]
    pub lotus_password: Option<String>,

    /// Bots per room channel: each bot subscribes to its room's channel and every `call`
    /// publishes one message there (0: no channel traffic) [default: 4].
    #[arg(long, value_name = "N", help_heading = "lotus scenario")]
    pub lotus_room_size: Option<u32>,

    /// Prefix of this run's state and channel names, so runs against the same node never
    /// share them [default: lt<unix ms>].
    #[arg(long, value_name = "NAME", help_heading = "lotus scenario")]
    pub lotus_prefix: Option<String>,
}

/// The scenario each bot runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    Echo,
    LoginThenEcho,
    /// Players of the lobby example (`lobby.rs`, on the types generated from its schema).
    Lobby,
    /// lotus wire v1 clients (`lotus.rs`, on the lotus-client crate).
    Lotus,
    Lua(PathBuf),
}

impl Scenario {
    pub fn parse(s: &str) -> anyhow::Result<Scenario> {
        Ok(match s {
            "echo" => Scenario::Echo,
            "login-then-echo" => Scenario::LoginThenEcho,
            "lobby" => Scenario::Lobby,
            "lotus" => Scenario::Lotus,
            path if path.ends_with(".lua") => Scenario::Lua(PathBuf::from(path)),
            other => bail!(
                "unknown scenario `{other}`: use echo, login-then-echo, lobby, lotus or a Lua script FILE.lua"
            ),
        })
    }

    pub fn name(&self) -> String {
        match self {
            Scenario::Echo => "echo".into(),
            Scenario::LoginThenEcho => "login-then-echo".into(),
            Scenario::Lobby => "lobby".into(),
            Scenario::Lotus => "lotus".into(),
            Scenario::Lua(p) => p.display().to_string(),
        }
    }
}

/// When the run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopRule {
    /// After the warmup plus this long.
    Duration(Duration),
    /// When every bot has done this many messages.
    Messages(u64),
}

/// The chart's format, from the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartFormat {
    Svg,
    Html,
}

/// The `lotus` scenario's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotusPlan {
    pub account: String,
    pub password: String,
    /// Bots per room channel; 0: no channel traffic.
    pub room_size: usize,
    /// Prefix of the run's state, channel and node names.
    pub prefix: String,
}

/// Validated settings for one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: String,
    pub addr: SocketAddr,
    pub connections: usize,
    pub ramp_up: Option<f64>,
    pub stop: StopRule,
    pub think_time: Duration,
    pub framing: Framing,
    pub scenario: Scenario,
    pub payload_size: usize,
    pub timeout: Duration,
    pub warmup: Duration,
    pub threads: usize,
    pub tick: Duration,
    pub max_message: usize,
    pub json: Option<String>,
    pub chart: Option<(PathBuf, ChartFormat)>,
    pub thresholds: Thresholds,
    pub quiet: bool,
    /// Set for `--scenario lotus`.
    pub lotus: Option<LotusPlan>,
}

impl Args {
    /// Checks the arguments and resolves the target.
    pub fn plan(&self) -> anyhow::Result<Plan> {
        let addr = self
            .target
            .to_socket_addrs()
            .with_context(|| {
                format!(
                    "--target {}: cannot resolve (expected HOST:PORT)",
                    self.target
                )
            })?
            .next()
            .with_context(|| format!("--target {}: no address", self.target))?;
        let scenario = Scenario::parse(&self.scenario)?;
        if scenario == Scenario::LoginThenEcho && self.framing != Framing::Packet {
            bail!("--scenario login-then-echo needs --framing packet (login is a BSON message)");
        }
        if scenario == Scenario::Lobby && self.framing != Framing::Packet {
            bail!("--scenario lobby needs --framing packet (the lobby speaks BSON packets)");
        }
        let lotus = self.lotus_plan(&scenario)?;
        if self.framing == Framing::Raw
            && self.payload_size == 0
            && matches!(scenario, Scenario::Echo)
        {
            bail!("--framing raw echo needs --payload-size > 0 (the reply is counted in bytes)");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be greater than 0");
        }
        if self.tick.is_zero() {
            bail!("--tick must be greater than 0");
        }
        if self.max_message < 16 {
            bail!("--max-message must be at least 16 bytes");
        }
        let chart = match &self.chart {
            None => None,
            Some(p) => {
                let ext = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                let format = match ext.as_str() {
                    "svg" => ChartFormat::Svg,
                    "html" | "htm" => ChartFormat::Html,
                    _ => bail!(
                        "--chart {}: the file name must end in .svg or .html",
                        p.display()
                    ),
                };
                Some((p.clone(), format))
            }
        };
        let connections = self.connections as usize;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = self
            .threads
            .map_or(cpus, |t| t as usize)
            .min(connections)
            .max(1);
        let stop = match (self.messages, self.duration) {
            (Some(n), _) => StopRule::Messages(n),
            (None, Some(d)) => StopRule::Duration(d),
            (None, None) => StopRule::Duration(Duration::from_secs(10)),
        };
        if let StopRule::Duration(d) = stop {
            if d.is_zero() {
                bail!("--duration must be greater than 0");
            }
        }
        Ok(Plan {
            target: self.target.clone(),
            addr,
            connections,
            ramp_up: self.ramp_up,
            stop,
            think_time: self.think_time,
            framing: self.framing,
            scenario,
            payload_size: self.payload_size,
            timeout: self.timeout,
            warmup: self.warmup,
            threads,
            tick: self.tick,
            max_message: self.max_message,
            json: self.json.clone(),
            chart,
            thresholds: Thresholds {
                p50_max: self.p50_max,
                p99_max: self.p99_max,
                error_max: self.error_max,
                min_throughput: self.min_throughput,
            },
            quiet: self.quiet,
            lotus,
        })
    }

    /// The lotus flags, checked against the scenario: they belong to `--scenario lotus`
    /// only, and that scenario speaks its own wire.
    fn lotus_plan(&self, scenario: &Scenario) -> anyhow::Result<Option<LotusPlan>> {
        if *scenario != Scenario::Lotus {
            let given = [
                ("--lotus-account", self.lotus_account.is_some()),
                ("--lotus-password", self.lotus_password.is_some()),
                ("--lotus-room-size", self.lotus_room_size.is_some()),
                ("--lotus-prefix", self.lotus_prefix.is_some()),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                bail!("{flag} needs --scenario lotus");
            }
            return Ok(None);
        }
        if self.framing != Framing::Packet {
            bail!("--scenario lotus speaks lotus wire v1; --framing does not apply to it");
        }
        let prefix = match &self.lotus_prefix {
            Some(p) if p.is_empty() || p.contains(char::is_whitespace) => {
                bail!("--lotus-prefix must be a non-empty name without spaces")
            }
            Some(p) => p.clone(),
            None => {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                format!("lt{ms}")
            }
        };
        Ok(Some(LotusPlan {
            account: self.lotus_account.clone().unwrap_or_else(|| "bot".into()),
            password: self
                .lotus_password
                .clone()
                .unwrap_or_else(|| "secret".into()),
            room_size: self.lotus_room_size.unwrap_or(4) as usize,
            prefix,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let mut full = vec!["stage-loadtest", "--target", "127.0.0.1:9"];
        full.extend_from_slice(args);
        Args::try_parse_from(full)?.plan()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn lotus_flags_belong_to_the_lotus_scenario() {
        let p = plan(&["--scenario", "lotus"]).unwrap();
        let l = p.lotus.unwrap();
        assert_eq!((l.account.as_str(), l.password.as_str()), ("bot", "secret"));
        assert_eq!(l.room_size, 4);
        assert!(l.prefix.starts_with("lt"), "{}", l.prefix);
        let p = plan(&[
            "--scenario",
            "lotus",
            "--lotus-account",
            "a",
            "--lotus-room-size",
            "0",
            "--lotus-prefix",
            "x",
        ])
        .unwrap();
        let l = p.lotus.unwrap();
        assert_eq!(
            (l.account.as_str(), l.room_size, l.prefix.as_str()),
            ("a", 0, "x")
        );
        assert!(plan(&[]).unwrap().lotus.is_none());
        let e = plan(&["--lotus-password", "p"]).unwrap_err().to_string();
        assert!(e.contains("--lotus-password needs --scenario lotus"), "{e}");
        let e = plan(&["--scenario", "lotus", "--framing", "text"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--framing does not apply"), "{e}");
        assert!(plan(&["--scenario", "lotus", "--lotus-prefix", ""]).is_err());
    }

    #[test]
    fn defaults() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.connections, 64);
        assert_eq!(p.stop, StopRule::Duration(Duration::from_secs(10)));
        assert_eq!(p.framing, Framing::Packet);
        assert_eq!(p.scenario, Scenario::Echo);
        assert_eq!(p.payload_size, 32);
        assert_eq!(p.timeout, Duration::from_secs(5));
        assert_eq!(p.think_time, Duration::ZERO);
        assert_eq!(p.warmup, Duration::ZERO);
        assert!(p.ramp_up.is_none() && p.json.is_none() && p.chart.is_none());
    }

    #[test]
    fn options() {
        let p = plan(&[
            "--connections",
            "3",
            "--ramp-up",
            "10",
            "--messages",
            "5",
            "--think-time",
            "2ms",
            "--framing",
            "text",
            "--scenario",
            "bots.lua",
            "--p99-max",
            "5ms",
            "--p50-max",
            "250us",
            "--error-max",
            "0",
            "--min-throughput",
            "100",
            "--chart",
            "x.HTML",
            "--json",
            "-",
            "--warmup",
            "1s",
            "--threads",
            "8",
        ])
        .unwrap();
        assert_eq!(p.connections, 3);
        assert_eq!(p.threads, 3, "never more threads than bots");
        assert_eq!(p.ramp_up, Some(10.0));
        assert_eq!(p.stop, StopRule::Messages(5));
        assert_eq!(p.framing, Framing::Text);
        assert_eq!(p.scenario, Scenario::Lua("bots.lua".into()));
        assert_eq!(p.thresholds.p99_max, Some(Duration::from_millis(5)));
        assert_eq!(p.thresholds.p50_max, Some(Duration::from_micros(250)));
        assert_eq!(p.thresholds.error_max, Some(0));
        assert_eq!(p.thresholds.min_throughput, Some(100.0));
        assert_eq!(p.chart.unwrap().1, ChartFormat::Html);
    }

    #[test]
    fn usage_errors() {
        assert!(plan(&["--duration", "1s", "--messages", "3"]).is_err());
        assert!(plan(&["--connections", "0"]).is_err());
        assert!(plan(&["--duration", "5"]).is_err());
        assert!(plan(&["--scenario", "fly"]).is_err());
        assert!(plan(&["--chart", "out.png"]).is_err());
        assert!(plan(&["--scenario", "login-then-echo", "--framing", "text"]).is_err());
        assert!(plan(&["--ramp-up", "0"]).is_err());
        assert!(plan(&["--timeout", "0"]).is_err());
        assert!(
            Args::try_parse_from(["stage-loadtest"]).is_err(),
            "--target is required"
        );
        let bad_target = Args::try_parse_from(["x", "--target", "nohostport"]).unwrap();
        assert!(bad_target.plan().is_err());
    }
}
