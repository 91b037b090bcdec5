//! `cohort-loopback`: a coordinator and edge clients in one process on 127.0.0.1, for a first
//! look (`demo`) and for measurements (`bench`).

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cohort_coordinator::scheduler::TaskEvent;
use cohort_datasets::PartitionSpec;
use cohort_loopback::demo::{DemoConfig, run_demo};
use cohort_loopback::soak::{SoakConfig, print_summary, run_soak};

#[derive(Parser)]
#[command(
    name = "cohort-loopback",
    version,
    about = "A Cohort coordinator and edge clients in one process over QUIC on 127.0.0.1"
)]
struct Cli {
    #[command(flatten)]
    log: cohort_logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a coordinator and edge clients on loopback and trains the digits MLP with SecAgg+.
    Demo {
        /// Edge clients.
        #[arg(long, default_value_t = 20)]
        clients: usize,
        /// Rounds.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Dirichlet concentration of the split; IID when omitted.
        #[arg(long)]
        dirichlet: Option<f64>,
        /// Local epochs per round.
        #[arg(long, default_value_t = 5)]
        epochs: u32,
    },
    /// Scale benchmark on loopback: round times, bytes per client and idle memory per client
    /// with a synthetic trainer (build with --release; the memory part runs the
    /// `cohort-coordinator` binary of the same profile).
    Bench {
        /// Client counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "20,100,500")]
        clients: Vec<usize>,
        /// Model sizes in parameters, comma-separated (2410: the digits MLP; larger: an MLP
        /// 784-h-200-10 of about that size).
        #[arg(long, value_delimiter = ',', default_value = "2410,1000000")]
        dim: Vec<usize>,
        /// Rounds per configuration.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Skip the idle-memory measurement.
        #[arg(long)]
        no_memory: bool,
        /// Clients selected per round among `--clients` (default: all of them); with fewer, the
        /// others keep checking in and are told to come back later.
        #[arg(long)]
        select: Option<usize>,
        /// The bench task's selection window in seconds; it also paces the rounds (the last
        /// round's members wait half a window), so a long soak sets it short.
        #[arg(long, default_value_t = cohort_loopback::bench::DEFAULT_WINDOW_SECS)]
        window_secs: f64,
        /// Only the idle-memory measurement, for each of `--clients` (for counts such as 10000
        /// that a round on one machine cannot serve).
        #[arg(long, conflicts_with = "no_memory")]
        memory_only: bool,
        /// A soak instead of the tables: `--rounds` rounds of one task with `cohort-coordinator
        /// serve` as a child process, this many devices leaving after each round and as many
        /// coming back or joining, the coordinator's VmRSS printed after every round and its
        /// slope over the last half (`--clients`: devices online, the first count only;
        /// `--select`: per round, default half of them; `--dim`: the first size).
        #[arg(long, conflicts_with = "memory_only")]
        churn: Option<usize>,
        /// With --churn: one device that comes back is a new enrollment every this many rounds
        /// (0: never).
        #[arg(long, default_value_t = 10, requires = "churn")]
        enroll_every: u32,
        /// With --churn: seed of who leaves and who comes back.
        #[arg(long, default_value_t = 1, requires = "churn")]
        seed: u64,
    },
    /// The benchmark's device farm: enrolls edge clients with a coordinator, prints
    /// "enrolled N", waits for a line on stdin, then runs them (started by `bench`).
    #[command(hide = true)]
    BenchClients {
        /// The coordinator's QUIC address.
        #[arg(long)]
        server: std::net::SocketAddr,
        /// Its certificate's SHA-256 fingerprint (hex).
        #[arg(long)]
        fingerprint: String,
        /// Where the clients keep their state.
        #[arg(long)]
        root: std::path::PathBuf,
        /// Clients.
        #[arg(long)]
        clients: usize,
        /// Rounds each client takes part in.
        #[arg(long)]
        rounds: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo and the benchmark print their progress on stdout; per-connection logs from their
    // dozens of in-process clients would drown it, so they log warnings only unless RUST_LOG
    // says otherwise.
    cli.log.init("warn");
    match cli.command {
        Command::Bench {
            clients,
            dim,
            rounds,
            select,
            window_secs,
            churn: Some(churn),
            enroll_every,
            seed,
            ..
        } => {
            let online = clients.first().copied().unwrap_or(40);
            let config = SoakConfig {
                online,
                select: select.unwrap_or(online / 2),
                dim: dim.first().copied().unwrap_or(2410),
                rounds,
                window_secs,
                churn,
                enroll_every,
                seed,
            };
            println!("machine: {}", cohort_loopback::bench::machine_state());
            println!(
                "soak: `cohort-coordinator serve` as a child process; {} devices online, {} selected \
                 a round, {} leave after each round and as many come back (a new enrollment every \
                 {} rounds), d = {}, {} rounds, {} s selection window",
                config.online,
                config.select,
                config.churn,
                config.enroll_every,
                config.dim,
                config.rounds,
                config.window_secs
            );
            let bin = cohort_loopback::bench::coordinator_binary()?;
            let report = run_soak(&bin, &config).await?;
            print_summary(&config, &report);
            println!(
                "machine at the end: {}",
                cohort_loopback::bench::machine_state()
            );
            Ok(())
        }
        Command::Bench {
            clients,
            dim,
            rounds,
            no_memory,
            memory_only,
            select,
            window_secs,
            churn: None,
            ..
        } => {
            let dims = if memory_only { &[][..] } else { &dim[..] };
            let farm = std::env::current_exe().context("cannot find this executable")?;
            cohort_loopback::bench::run_bench(
                &farm,
                &clients,
                select,
                window_secs,
                dims,
                rounds,
                !no_memory,
            )
            .await
        }
        Command::BenchClients {
            server,
            fingerprint,
            root,
            clients,
            rounds,
        } => {
            let fingerprint: cohort_net::CertFingerprint = fingerprint
                .parse()
                .context("--fingerprint must be the certificate's SHA-256 in 64 hex digits")?;
            let result = cohort_loopback::farm::run_farm(&cohort_loopback::farm::FarmConfig {
                server,
                fingerprint,
                root,
                clients,
                rounds,
            })
            .await;
            let code = match result {
                Ok(0) => 0,
                Ok(failed) => {
                    eprintln!("device farm: {failed} of {clients} clients ended with an error");
                    1
                }
                Err(e) => {
                    eprintln!("device farm: {e:#}");
                    1
                }
            };
            // Exit now: the blocking thread that watches stdin (for the benchmark going away)
            // would otherwise keep the runtime, and this process, waiting.
            std::process::exit(code)
        }
        Command::Demo {
            clients,
            rounds,
            dirichlet,
            epochs,
        } => {
            let config = DemoConfig {
                clients,
                rounds,
                epochs,
                partition: match dirichlet {
                    Some(alpha) => PartitionSpec::Dirichlet { alpha },
                    None => PartitionSpec::Iid,
                },
                ..DemoConfig::default()
            };
            println!(
                "demo: coordinator + {clients} edge clients on 127.0.0.1 (QUIC, OPAQUE, SecAgg+), {rounds} rounds of the digits MLP"
            );
            let report = run_demo(config, |e| match e {
                TaskEvent::RoundCompleted {
                    round,
                    contributors,
                    dropped,
                    evaluation,
                    federated_evaluation,
                    took,
                    ..
                } => println!(
                    "round {round}: {contributors} inputs aggregated, {dropped} dropped, {:.1} s, test accuracy {}, federated accuracy {}",
                    took.as_secs_f64(),
                    evaluation.map_or("-".into(), |(_, a)| format!("{:.1}%", a * 100.0)),
                    // Measured by the clients on their own data, on the model the round
                    // started from.
                    federated_evaluation.map_or("-".into(), |f| format!(
                        "{:.1}% (round's starting model, {} clients, {} examples)",
                        f.accuracy * 100.0,
                        f.clients,
                        f.examples
                    ))
                ),
                TaskEvent::RoundAborted { round, reason, .. } => {
                    println!("round {round} aborted ({reason}); retrying")
                }
                TaskEvent::TaskFinished { model, .. } => println!("finished; final model {model}"),
            })
            .await?;
            println!("final test accuracy: {:.1}%", report.final_accuracy * 100.0);
            Ok(())
        }
    }
}
