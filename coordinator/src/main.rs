//! `cohort-coordinator`: serve, manage tasks and accounts, verify the round log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cohort_coordinator::auth::{
    AuthConfig, Authenticator, Enrollment, InviteIssuer, SystemClock, load_or_generate_server_setup,
};
use cohort_coordinator::budget::Budget;
use cohort_coordinator::checkpoints::Checkpoints;
use cohort_coordinator::export;
use cohort_coordinator::http::ApiRole;
use cohort_coordinator::http::tokens::{self, OWNER_TOKEN_FILE};
use cohort_coordinator::scheduler::SchedulerOptions;
use cohort_coordinator::server::{Coordinator, ServerConfig, open_store};
use cohort_coordinator::session::SessionOptions;
use cohort_coordinator::states::{RoundState, TaskState};
use cohort_coordinator::task::TaskDefinition;
use cohort_net::opaque_suite::KsfParams;
use cohort_protocol::{Role, RoundId, TaskId};
use cohort_task::Attempt;

#[derive(Parser)]
#[command(
    name = "cohort-coordinator",
    version,
    about = "Cohort's federated-learning coordinator"
)]
struct Cli {
    /// The state directory (database, keys, checkpoints).
    #[arg(long, global = true, default_value = "cohort-state")]
    state: PathBuf,
    #[command(flatten)]
    log: cohort_logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the coordinator.
    Serve {
        /// QUIC address.
        #[arg(long, default_value = "0.0.0.0:4433")]
        listen: SocketAddr,
        /// Address of the owners' HTTP server: the API, the web console and Prometheus
        /// `/metrics`. Keep it on loopback (or behind a TLS proxy): tokens travel in the clear.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Serve no HTTP (no API, console or `/metrics`).
        #[arg(long)]
        no_http: bool,
        /// Earlier name of --http (when `/metrics` had its own listener); overrides --http.
        #[arg(long, hide = true)]
        metrics: Option<SocketAddr>,
        /// Let anyone register (trials only; the default needs an invite).
        #[arg(long)]
        open_enrollment: bool,
        /// First estimate of a round's length in seconds (steers when turned-away clients come
        /// back; refined from measured rounds).
        #[arg(long, default_value_t = 30)]
        round_estimate_secs: u64,
        /// On SIGTERM or Ctrl-C, how long a round in flight may take to finish before it is
        /// abandoned (a second signal stops at once).
        #[arg(long, default_value_t = 60)]
        shutdown_grace_secs: u64,
    },
    /// Task definitions.
    Task {
        #[command(subcommand)]
        action: TaskAction,
    },
    /// Accounts.
    Account {
        #[command(subcommand)]
        action: AccountAction,
    },
    /// Issues a single-use invite code for a contributor.
    Invite {
        /// Validity in hours (forever when omitted).
        #[arg(long)]
        hours: Option<i64>,
    },
    /// The hash-chained round log.
    Log {
        #[command(subcommand)]
        action: LogAction,
    },
    /// Trained models.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Tokens of the owners' HTTP API.
    Owner {
        #[command(subcommand)]
        action: OwnerAction,
    },
}

#[derive(Subcommand)]
enum ModelAction {
    /// Writes a task's model of a logged round (the latest when --round is omitted) as a
    /// safetensors file: tensors `layers.{layer}.{name}`, the model spec and the round-log
    /// hashes in the metadata.
    Export {
        /// The task id.
        task: String,
        /// The round (0 is the initial model).
        #[arg(long)]
        round: Option<u64>,
        /// The output file.
        #[arg(long)]
        out: PathBuf,
        /// `safetensors` (the only format the coordinator writes; a burn record needs burn,
        /// which the coordinator does not link: load the safetensors file with burn-import).
        #[arg(long, default_value = "safetensors", value_parser = ["safetensors"])]
        format: String,
    },
}

#[derive(Subcommand)]
enum OwnerAction {
    /// Mints an API token and prints it (only its hash is stored); `owner token list` shows
    /// the tokens, `owner token revoke NAME|ID` revokes.
    #[command(args_conflicts_with_subcommands = true)]
    Token {
        #[command(subcommand)]
        action: Option<TokenAction>,
        /// A name for the token (shown in the audit table).
        #[arg(long, default_value = "owner")]
        name: String,
        /// `owner` (read and change) or `viewer` (read only).
        #[arg(long, default_value = "owner", value_parser = ["owner", "viewer"])]
        role: String,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Lists the API tokens: id, name, role, when created, and whether revoked.
    List,
    /// Revokes the tokens with this name, or the one whose id (from `list`, at least 8 hex
    /// digits) starts with this. A running `serve` refuses it within a second.
    Revoke {
        /// A token name or id.
        which: String,
    },
}

#[derive(Subcommand)]
enum TaskAction {
    /// Stores a task definition (TOML) in state "created".
    Create {
        /// The definition file.
        file: PathBuf,
    },
    /// Marks a task running; a running coordinator picks it up within seconds.
    Start {
        /// The task id.
        id: String,
    },
    /// Lists tasks and their rounds.
    List,
    /// Shows a task: its state, its differential-privacy plan (ε budget, noise, round limit)
    /// and, per published round of its verified round log, the participants and the ε spent.
    Show {
        /// The task id.
        id: String,
    },
    /// Shows every attempt at every round of a task: finished, aborted (and retried), or
    /// abandoned because the coordinator stopped while it ran.
    History {
        /// The task id.
        id: String,
    },
}

#[derive(Subcommand)]
enum AccountAction {
    /// Creates a model-owner account (asks nothing: the password comes from COHORT_PASSWORD).
    AddOwner {
        /// The account name.
        username: String,
    },
}

#[derive(Subcommand)]
enum LogAction {
    /// Verifies a task's chain and says where it breaks.
    Verify {
        /// The task id.
        task: String,
    },
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init("warn,cohort_coordinator=info");
    match cli.command {
        Command::Serve {
            listen,
            http,
            no_http,
            metrics,
            open_enrollment,
            round_estimate_secs,
            shutdown_grace_secs,
        } => {
            // Transient copies that grow with the accounts must not stay resident.
            cohort_coordinator::allocator::map_large_blocks();
            let scheduler = SchedulerOptions {
                initial_round_estimate: Duration::from_secs(round_estimate_secs),
                ..SchedulerOptions::default()
            };
            if metrics.is_some() {
                eprintln!(
                    "note: --metrics is now --http: the API, the console and /metrics share one \
                     server"
                );
            }
            let http = (!no_http).then_some(metrics.unwrap_or(http));
            serve(
                cli.state,
                listen,
                http,
                open_enrollment,
                scheduler,
                Duration::from_secs(shutdown_grace_secs),
            )
            .await
        }
        Command::Task { action } => {
            let store = open_store(&cli.state)?;
            match action {
                TaskAction::Create { file } => {
                    let def = TaskDefinition::load(&file)?;
                    store.put_task(&def.id, &def.to_toml()?, TaskState::Created, now())?;
                    // The privacy plan (ε computed from the noise, or the noise for ε), shown
                    // before the task starts.
                    if let Some(plan) = def.privacy_plan(def.model().num_parameters()?, None)? {
                        for line in plan.to_string().lines() {
                            println!("privacy: {line}");
                        }
                    }
                    println!(
                        "task {} created; start it with `task start {}`",
                        def.id, def.id
                    );
                }
                TaskAction::Start { id } => {
                    if !store.set_task_state(&id, TaskState::Running, now())? {
                        anyhow::bail!("no task {id}; create it first with `task create FILE`");
                    }
                    println!("task {id} is running");
                }
                TaskAction::List => {
                    for t in store.tasks()? {
                        let rounds = store.rounds(&t.id)?;
                        let done = rounds
                            .iter()
                            .filter(|r| r.state == RoundState::Finished)
                            .count();
                        println!("{}\t{}\t{} finished rounds", t.id, t.state, done);
                    }
                }
                TaskAction::Show { id } => {
                    let Some(row) = store.task(&id)? else {
                        anyhow::bail!("no task {id}; `task list` shows the tasks");
                    };
                    let def = TaskDefinition::from_stored(&row.definition)?;
                    println!("task {id}\t{}\t{} rounds", row.state, def.rounds);
                    let budget = Budget::of(&store, &id)?;
                    match &budget {
                        Some(b) => {
                            for line in b.plan.to_string().lines() {
                                println!("privacy: {line}");
                            }
                            println!(
                                "privacy: epsilon {:.4} spent after {} rounds, {} rounds left",
                                b.epsilon_spent(),
                                b.spent.len(),
                                b.rounds_left()
                            );
                        }
                        None => println!("privacy: none (no differential privacy)"),
                    }
                    let entries = store
                        .round_log()
                        .verify(&TaskId(id.clone()))
                        .map_err(|e| anyhow::anyhow!("{e}; `log verify {id}` says where"))?;
                    for e in entries.iter().filter(|e| e.entry.round.0 > 0) {
                        let eps = cohort_coordinator::publish::epsilon_spent_of(&e.entry.params)
                            .map_or_else(|| "-".to_string(), |x| format!("{x:.4}"));
                        println!(
                            "round {}\t{} participants\tepsilon spent {eps}\tmodel {}",
                            e.entry.round.0, e.entry.participants, e.entry.output_weights
                        );
                    }
                }
                TaskAction::History { id } => {
                    if store.task(&id)?.is_none() {
                        anyhow::bail!("no task {id}; `task list` shows the tasks");
                    }
                    for a in store.attempts(&id)? {
                        println!(
                            "round {}\tattempt {} (round id {})\t{}\t{} selected{}",
                            a.round,
                            Attempt::from_round_id(RoundId(a.round_id)).attempt,
                            a.round_id,
                            a.state,
                            a.selected,
                            a.reason.map(|r| format!("\t{r}")).unwrap_or_default()
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Account { action } => {
            let AccountAction::AddOwner { username } = action;
            let password = std::env::var("COHORT_PASSWORD")
                .context("set COHORT_PASSWORD to the new owner's password")?;
            let auth = local_auth(&cli.state)?;
            auth.register_local(
                &username,
                password.as_bytes(),
                Role::Owner,
                &KsfParams::default(),
            )?;
            println!("owner {username} created");
            Ok(())
        }
        Command::Invite { hours } => {
            let auth = local_auth(&cli.state)?;
            let code = auth.issue_invite(
                &InviteIssuer::Admin,
                Role::Contributor,
                hours.map(|h| h * 3600),
            )?;
            println!("{code}");
            Ok(())
        }
        Command::Model { action } => {
            let ModelAction::Export {
                task,
                round,
                out,
                format: _,
            } = action;
            let store = open_store(&cli.state)?;
            let checkpoints = Checkpoints::open(&cli.state)?;
            let model = export::model_of_round(&store, &checkpoints, &task, round, 1 << 34)?;
            let bytes = export::to_safetensors(&model)?;
            // Atomically: a crash never leaves half a model where a reader expects one.
            cohort_net::atomic_file::write_atomically(&out, &bytes, false)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "wrote {} ({} bytes): task {task}, round {}, model {}, round-log entry {}",
                out.display(),
                bytes.len(),
                model.entry.entry.round.0,
                model.entry.entry.output_weights,
                model.entry.hash
            );
            Ok(())
        }
        Command::Owner { action } => {
            let OwnerAction::Token { action, name, role } = action;
            match action {
                Some(TokenAction::List) => {
                    let store = open_store(&cli.state)?;
                    let list = tokens::list(&store)?;
                    if list.is_empty() {
                        println!("no API tokens");
                    }
                    for t in list {
                        println!(
                            "{}\t{}\t{}\tcreated {}\t{}",
                            t.id,
                            t.name,
                            t.role.as_str(),
                            t.created_at,
                            t.revoked_at
                                .map_or("active".to_string(), |at| format!("revoked {at}"))
                        );
                    }
                    return Ok(());
                }
                Some(TokenAction::Revoke { which }) => {
                    let store = open_store(&cli.state)?;
                    let n = tokens::revoke(&store, &which, now())?;
                    if n == 0 {
                        anyhow::bail!(
                            "no active token is named {which:?} or has an id starting with it; \
                             `owner token list` shows them"
                        );
                    }
                    println!("revoked {n} token(s) matching {which:?}");
                    return Ok(());
                }
                None => {}
            }
            let role = if role == "viewer" {
                ApiRole::Viewer
            } else {
                ApiRole::Owner
            };
            let store = open_store(&cli.state)?;
            let token = tokens::mint(&store, &name, role, now())?;
            println!("{token}");
            eprintln!(
                "send it as `Authorization: Bearer TOKEN`, or open the console at \
                 http://127.0.0.1:8080/#token=TOKEN"
            );
            Ok(())
        }
        Command::Log { action } => {
            let LogAction::Verify { task } = action;
            let store = open_store(&cli.state)?;
            match store.round_log().verify(&TaskId(task.clone())) {
                Ok(entries) => {
                    println!(
                        "round log of {task}: {} entries, chain intact",
                        entries.len()
                    );
                    // The signatures devices check, against the key in the state directory.
                    let key_file = cli.state.join(cohort_coordinator::log_key::LOG_KEY_FILE);
                    if key_file.exists() {
                        let key = cohort_coordinator::log_key::load_or_generate(&cli.state, false)?
                            .verifying_key();
                        let mut signed = 0;
                        for e in entries.iter().filter(|e| !e.signature.is_empty()) {
                            if let Err(err) =
                                cohort_protocol::chain::verify_signature(&key, &e.to_wire())
                            {
                                println!(
                                    "{err} ({}): the entry was re-signed or its signature \
                                     edited; devices refuse it. Restore the database from a \
                                     backup",
                                    key_file.display()
                                );
                                std::process::exit(1);
                            }
                            signed += 1;
                        }
                        println!(
                            "signatures: {signed} of {} entries signed by the round-log key {}",
                            entries.len(),
                            hex::encode(key.to_bytes())
                        );
                    }
                    for e in &entries {
                        println!(
                            "round {}\t{} participants\tmodel {}\tentry {}",
                            e.entry.round.0, e.entry.participants, e.entry.output_weights, e.hash
                        );
                    }
                    if let Some(last) = entries.last() {
                        println!(
                            "head {} (round {}, model {})",
                            last.hash, last.entry.round.0, last.entry.output_weights
                        );
                    }
                    Ok(())
                }
                Err(e) => {
                    println!("{e}");
                    println!(
                        "the entries before that round are intact; restore the database from a \
                         backup to recover the rest"
                    );
                    std::process::exit(1);
                }
            }
        }
    }
}

fn local_auth(state: &std::path::Path) -> anyhow::Result<Authenticator> {
    let store = open_store(state)?;
    let setup = load_or_generate_server_setup(state)?;
    Ok(Authenticator::new(
        setup,
        store,
        AuthConfig::default(),
        Arc::new(SystemClock),
    ))
}

async fn serve(
    state: PathBuf,
    listen: SocketAddr,
    http: Option<SocketAddr>,
    open_enrollment: bool,
    scheduler: SchedulerOptions,
    shutdown_grace: Duration,
) -> anyhow::Result<()> {
    let config = ServerConfig {
        state_dir: state,
        listen,
        http_listen: http,
        auth: AuthConfig {
            enrollment: if open_enrollment {
                Enrollment::Open
            } else {
                Enrollment::InviteOnly
            },
            ..AuthConfig::default()
        },
        session: SessionOptions::default(),
        scheduler,
        evaluator: None,
    };
    let c = Coordinator::start(config).await?;
    println!(
        "listening on {} (certificate fingerprint {})",
        c.addr,
        c.fingerprint.to_hex()
    );
    if let Some(a) = c.http_addr {
        match &c.new_owner_token {
            Some(token) => println!(
                "console on http://{a}/#token={token} (the owner token is in {}; keep it secret)",
                state_dir_display(&c)
            ),
            None => println!(
                "console on http://{a}/ (token in {})",
                state_dir_display(&c)
            ),
        }
        println!("metrics on http://{a}/metrics");
    }
    // Pick up tasks started from the CLI while serving.
    let mut started: std::collections::HashSet<String> = c
        .store
        .tasks()?
        .into_iter()
        .filter(|t| t.state == TaskState::Running)
        .map(|t| t.id)
        .collect();
    let mut stop = StopSignals::new()?;
    loop {
        tokio::select! {
            signal = stop.next() => {
                println!("{signal}: no new rounds start; waiting up to {}s for a round in flight (send it again to stop now)", shutdown_grace.as_secs());
                break;
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let rows = c.store.tasks()?;
        // A task paused or stopped since can be picked up again once it runs again.
        started.retain(|id| {
            rows.iter()
                .any(|t| &t.id == id && t.state == TaskState::Running)
        });
        for t in rows {
            // Tasks the API starts are running already; a task the CLI marked running starts
            // here.
            if t.state == TaskState::Running
                && !c.scheduler.is_running(&t.id)
                && started.insert(t.id.clone())
            {
                match TaskDefinition::from_stored(&t.definition) {
                    Ok(def) => {
                        if let Err(e) = c.scheduler.start_task(def) {
                            tracing::error!(task = %t.id, error = %e, "cannot start the task; fix its definition and create it again");
                        }
                    }
                    Err(e) => tracing::error!(task = %t.id, error = %e, "stored task is invalid"),
                }
            }
        }
    }
    let drained = tokio::select! {
        outcomes = c.scheduler.drain(shutdown_grace) => Some(outcomes),
        signal = stop.next() => {
            println!("{signal} again: stopping now; a round in flight is recorded as abandoned at the next start");
            None
        }
    };
    c.shutdown();
    match drained {
        Some(outcomes) if outcomes.is_empty() => println!("stopped: no task was running"),
        Some(outcomes) => {
            for outcome in outcomes {
                println!("stopped: {outcome}");
            }
        }
        None => {}
    }
    Ok(())
}

fn state_dir_display(c: &Coordinator) -> String {
    c.state_dir.join(OWNER_TOKEN_FILE).display().to_string()
}

/// SIGTERM and Ctrl-C (SIGINT), as one stream of stop requests.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?,
        })
    }

    /// Waits for the next stop request and names it.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted"
        }
    }
}
