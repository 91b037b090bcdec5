//! `cohort-edge`: enroll this device, run the contributor daemon, show its status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cohort_datasets::{PartitionSpec, embedded_digits, load_digits};
use cohort_edge::credentials::Credentials;
use cohort_edge::eligibility::EligibilityPolicy;
use cohort_edge::enroll;
use cohort_edge::host::DeviceState as _;
use cohort_edge::run::{RunConfig, cache_dir};
use cohort_edge::trainer::BurnTrainer;
use cohort_edge::{
    ClientProgress, EdgeClient, FileSecretStore, Host, LinuxDevice, Participation, ProgressListener,
};
use cohort_learning::{BackendChoice, ComputeBackend};
use cohort_net::opaque_suite::KsfParams;
use cohort_net::{CertFingerprint, ClientTransport, FramedStream, ServerTrust, TransportOptions};
use cohort_protocol::{DEFAULT_MAX_FRAME_LEN, ErrorCode, RoundResult};
use cohort_task::Attempt;

#[derive(Parser)]
#[command(name = "cohort-edge", version, about = "Cohort's contributor daemon")]
struct Cli {
    /// The state directory (credentials, cached weights).
    #[arg(long, global = true, default_value = "cohort-edge-state")]
    state: PathBuf,
    #[command(flatten)]
    log: cohort_logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Registers this device with a coordinator (password from COHORT_PASSWORD).
    Enroll {
        /// The coordinator's address.
        #[arg(long)]
        server: SocketAddr,
        /// The SHA-256 fingerprint (hex) of the coordinator's certificate, to pin.
        #[arg(long)]
        fingerprint: String,
        /// The account name.
        #[arg(long)]
        username: String,
        /// An invite code from the model owner.
        #[arg(long)]
        invite: Option<String>,
    },
    /// Trains when eligible, until stopped (password from COHORT_PASSWORD).
    Run {
        /// The coordinator's address.
        #[arg(long)]
        server: SocketAddr,
        /// Local data: an image folder (one sub-folder per label), a CSV file or text files, read
        /// as the task's [input] declares; or a directory holding digits.csv(.gz). The embedded
        /// digits when omitted.
        #[arg(long)]
        data: Option<PathBuf>,
        /// With the embedded digits: this device's shard, "I/N".
        #[arg(long, default_value = "0/10")]
        shard: String,
        /// Train on battery too.
        #[arg(long)]
        allow_battery: bool,
        /// Train only when the machine is idle.
        #[arg(long)]
        require_idle: bool,
        /// Stop after this many completed rounds.
        #[arg(long)]
        rounds: Option<u32>,
        /// Exit once the task this device works on has finished, instead of waiting for a new
        /// one.
        #[arg(long)]
        until_task_ends: bool,
        /// Take part only in tasks with differential privacy whose budget ε is at most this
        /// (checked by this device from the task's privacy section and its round log); tasks
        /// without DP, or above the limit, are refused.
        #[arg(long)]
        max_epsilon: Option<f64>,
        /// Also take part in rounds without the consistency check, in which a coordinator that
        /// deviates from the protocol could learn this device's update. Refused by default.
        #[arg(long)]
        dangerous_allow_rounds_without_consistency_check: bool,
    },
    /// Shows the enrollment, the cached weights and the verified round-log heads; with
    /// --server, also this device's credit in each task, checked against those heads (password
    /// from COHORT_PASSWORD).
    Status {
        /// The coordinator to ask for this device's contributor-ledger credit.
        #[arg(long)]
        server: Option<SocketAddr>,
    },
}

/// Prints what the contributor wants to know: each round's outcome, and when the task ended.
struct Printer;

impl ProgressListener for Printer {
    fn on_progress(&self, _progress: &ClientProgress) {}

    fn on_participation(&self, p: &Participation) {
        match p {
            Participation::Contributed(c) => match &c.result {
                RoundResult::Completed {
                    new_model,
                    contributors,
                    ..
                } => println!(
                    "{}: contributed an update from {} examples (loss {:.3}, trained in {:.2} s) to a sum of {contributors}; new model {}",
                    Attempt::from_round_id(c.round_id),
                    c.num_examples,
                    c.loss,
                    c.training.as_secs_f64(),
                    &new_model.to_hex()[..16]
                ),
                RoundResult::Aborted { reason, .. } => {
                    println!("{} aborted: {reason}", Attempt::from_round_id(c.round_id))
                }
            },
            Participation::NoTask {
                finished: Some(task),
                ..
            } => println!("task {task} finished; waiting for a new task"),
            _ => {}
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init("warn,cohort_edge=info");
    match cli.command {
        Command::Enroll {
            server,
            fingerprint,
            username,
            invite,
        } => {
            let password = password()?;
            let pin = parse_fingerprint(&fingerprint)?;
            let rt = tokio::runtime::Runtime::new()?;
            let _enter = rt.enter();
            let transport = ClientTransport::bind(
                "0.0.0.0:0".parse()?,
                ServerTrust::Pinned(pin),
                TransportOptions::default(),
            )?;
            std::fs::create_dir_all(&cli.state)?;
            let no_invite = invite.is_none();
            let (_, role) = rt
                .block_on(async {
                    let conn = transport.connect(server, "localhost").await?;
                    let mut stream = FramedStream::open(&conn, DEFAULT_MAX_FRAME_LEN).await?;
                    enroll::hello(&mut stream).await?;
                    let r = enroll::enroll(
                        &mut stream,
                        &cli.state,
                        &username,
                        &password,
                        invite.as_deref(),
                        KsfParams::default(),
                        Some(fingerprint),
                    )
                    .await;
                    stream.finish();
                    conn.close(0u32.into(), b"enrolled");
                    r
                })
                .map_err(|e| {
                    let hint = match e.code() {
                        Some(ErrorCode::InviteRequired) if no_invite => {
                            "ask the model owner for an invite code and pass it with --invite"
                        }
                        Some(ErrorCode::InviteRequired) => {
                            "the invite code was refused; ask the model owner for a new one"
                        }
                        _ => "enrollment failed",
                    };
                    anyhow::Error::new(e).context(hint)
                })?;
            println!(
                "enrolled as {username} ({role:?}); credentials in {}",
                cli.state.display()
            );
            Ok(())
        }
        Command::Run {
            server,
            data,
            shard,
            allow_battery,
            require_idle,
            rounds,
            until_task_ends,
            max_epsilon,
            dangerous_allow_rounds_without_consistency_check,
        } => {
            let password = password()?;
            let creds = Credentials::load(&cli.state)?
                .context("this device is not enrolled; run `cohort-edge enroll` first")?;
            parse_fingerprint(
                creds
                    .server_fingerprint
                    .as_deref()
                    .context("the credentials pin no coordinator; enroll again")?,
            )?;
            let digits_dir = data
                .as_ref()
                .filter(|d| d.join("digits.csv").exists() || d.join("digits.csv.gz").exists());
            let dataset = match (&data, digits_dir) {
                (_, Some(dir)) => Some(load_digits(dir)?.train),
                (Some(_), None) => None,
                (None, _) => {
                    let (i, n) = shard
                        .split_once('/')
                        .and_then(|(i, n)| {
                            Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?))
                        })
                        .filter(|(i, n)| i < n)
                        .context("--shard must be I/N with I < N")?;
                    let train = embedded_digits()?.train;
                    let parts = PartitionSpec::Iid.partition(&train, None, n, 1)?;
                    Some(train.subset(&parts[i])?)
                }
            };
            let backend = ComputeBackend::select(BackendChoice::Auto)?;
            let config = RunConfig {
                eligibility: EligibilityPolicy {
                    require_ac_power: !allow_battery,
                    require_idle,
                    ..EligibilityPolicy::default()
                },
                max_rounds: rounds,
                until_task_ends,
                max_epsilon,
                dangerous_allow_rounds_without_consistency_check,
                ..RunConfig::new(server, cli.state.clone(), password)
            };
            let host = Host {
                device: Arc::new(LinuxDevice::default()),
                secrets: Arc::new(FileSecretStore::new(&cli.state)),
                secrets_place: cli.state.display().to_string(),
                listener: Some(Arc::new(Printer)),
            };
            let trainer = match (dataset, data) {
                (Some(dataset), _) => {
                    println!("training on {} local examples", dataset.len());
                    BurnTrainer::new(backend, dataset)
                }
                (None, Some(path)) => {
                    println!(
                        "training on the files in {} (read as each task declares its input)",
                        path.display()
                    );
                    BurnTrainer::from_files(backend, path)
                }
                (None, None) => anyhow::bail!("no local data"),
            };
            let client = Arc::new(EdgeClient::new(config, host, Box::new(trainer))?);
            stop_on_ctrl_c(client.clone());
            let n = client.run_until_stopped()?;
            println!("contributed to {n} rounds");
            Ok(())
        }
        Command::Status { server } => {
            match Credentials::load(&cli.state)? {
                Some(c) => println!(
                    "enrolled as {} (coordinator fingerprint {})",
                    c.username,
                    c.server_fingerprint.as_deref().unwrap_or("not pinned")
                ),
                None => println!("not enrolled (state dir {})", cli.state.display()),
            }
            let mut cached = 0;
            if let Ok(entries) = std::fs::read_dir(cache_dir(&cli.state)) {
                for e in entries.flatten() {
                    cached += 1;
                    println!("cached weights {}", e.file_name().to_string_lossy());
                }
            }
            println!("{cached} cached weight vectors");
            let heads = cohort_edge::log_check::load_heads(&cli.state)?;
            if heads.is_empty() {
                println!("round log: nothing verified yet");
            }
            for (task, head) in heads {
                println!(
                    "round log of task {task}: verified up to round {} (entry {}, model {})",
                    head.round, head.entry, head.model
                );
            }
            let device = LinuxDevice::default().read()?;
            let battery = device
                .battery_percent
                .map_or_else(|| "no battery".to_owned(), |b| format!("battery {b}%"));
            println!(
                "device: on AC power {}, unmetered network {}, idle {}, {battery}, low-power mode {}, thermally throttled {}",
                device.charging,
                device.unmetered,
                device.idle,
                device.low_power,
                device.thermal_throttled
            );
            match EligibilityPolicy::default().allows(&device) {
                Ok(()) => println!("eligible under the default policy"),
                Err(why) => println!("not eligible under the default policy: {why}"),
            }
            if let Some(server) = server {
                print_credit(server, &cli.state)?;
            }
            Ok(())
        }
    }
}

/// A trainer for a client that only asks for its credit: it never trains.
struct NoTraining;

impl cohort_edge::trainer::Trainer for NoTraining {
    fn num_examples(&self) -> u64 {
        0
    }

    fn train(
        &mut self,
        _: &cohort_protocol::TaskPlan,
        _: &[f32],
        _: u64,
        _: &cohort_edge::trainer::TrainControl,
    ) -> Result<cohort_edge::trainer::LocalUpdate, cohort_edge::trainer::TrainError> {
        Err(cohort_edge::trainer::TrainError::Unsupported(
            "`cohort-edge status` does not train",
        ))
    }

    fn evaluate(
        &mut self,
        _: &cohort_protocol::TaskPlan,
        _: &[f32],
    ) -> Result<cohort_edge::trainer::LocalMetrics, cohort_edge::trainer::TrainError> {
        Err(cohort_edge::trainer::TrainError::Unsupported(
            "`cohort-edge status` does not evaluate",
        ))
    }
}

/// Prints this device's credit in each task whose round log it verified: the total, and per
/// round the weight, the credit, its basis and the entry that backs it.
fn print_credit(server: SocketAddr, state: &std::path::Path) -> anyhow::Result<()> {
    let config = RunConfig::new(server, state.to_path_buf(), password()?);
    let host = Host {
        device: Arc::new(LinuxDevice::default()),
        secrets: Arc::new(FileSecretStore::new(state)),
        secrets_place: state.display().to_string(),
        listener: None,
    };
    let client = EdgeClient::new(config, host, Box::new(NoTraining))?;
    let tasks = client.verified_tasks()?;
    if tasks.is_empty() {
        println!("credit: no task's round log verified yet, so no credit to check");
    }
    for task in tasks {
        let c = client
            .credit(&task)
            .with_context(|| format!("checking the credit of task {task}"))?;
        let proven = c.rows.iter().filter(|r| r.proven).count();
        println!(
            "credit in task {}: {:.6} over {} rounds as {} ({proven} of them proven by the round \
             log verified up to round {}; {:.6} proven)",
            c.task,
            c.total(),
            c.rows.len(),
            c.account,
            c.verified_up_to,
            c.proven_total()
        );
        for r in &c.rows {
            println!(
                "  {}: weight {}, credit {:.6} ({} {:.6}), entry {} {}",
                r.attempt,
                r.weight,
                r.credit,
                r.basis,
                r.improvement,
                &r.entry.to_hex()[..16],
                if r.proven {
                    "verified: member of the round"
                } else {
                    "NOT proven: the entry predates member trees"
                }
            );
        }
        if c.newer_unverified > 0 {
            println!(
                "  {} newer rounds credited but not yet checked (this device verifies their \
                 entries at its next check-in)",
                c.newer_unverified
            );
        }
    }
    Ok(())
}

/// Stops the client on Ctrl-C (the round in progress is abandoned; the coordinator counts a
/// dropout).
fn stop_on_ctrl_c(client: Arc<EdgeClient>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
            eprintln!("stopping");
            let _ = client.stop();
        }
    });
}

fn password() -> anyhow::Result<String> {
    std::env::var("COHORT_PASSWORD").context("set COHORT_PASSWORD to the account's password")
}

fn parse_fingerprint(hex_str: &str) -> anyhow::Result<CertFingerprint> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out)
        .context("the fingerprint must be 64 hex digits (printed by `cohort-coordinator serve`)")?;
    Ok(CertFingerprint(out))
}
