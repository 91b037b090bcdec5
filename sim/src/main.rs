//! `cohort-sim`: run, sweep and benchmark federated-learning simulations.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cohort_sim::config::{Experiment, TrainerKind};
use cohort_sim::plot::figures::{EpsilonPoint, accuracy_vs_epsilon};
use cohort_sim::run::{run_experiment, write_plots};
use cohort_sim::{bench, contribution, sweep};

#[derive(Parser)]
#[command(
    name = "cohort-sim",
    version,
    about = "Simulate federated learning with Cohort's round and SecAgg+ state machines on a virtual clock"
)]
struct Cli {
    #[command(flatten)]
    log: cohort_logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one experiment (the built-in digits + SecAgg+ experiment when no file is given).
    Run {
        /// The experiment file (TOML); see sim/experiments/.
        experiment: Option<PathBuf>,
        /// Write metrics.csv, summary.json and plots here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the experiment's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override the number of rounds.
        #[arg(long)]
        rounds: Option<u32>,
        /// Override the trainer (`builtin` runs without burn, e.g. in a
        /// `--no-default-features` build).
        #[arg(long, value_enum)]
        trainer: Option<TrainerKind>,
    },
    /// Run several experiments (files, or sweep files with a grid) and plot them together.
    Sweep {
        /// Experiment or sweep files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output directory: one folder per run, and the combined plots.
        #[arg(long, default_value = "sweep-out")]
        out: PathBuf,
        /// Override every run's seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run the experiment live: a real coordinator and one real edge client per partition, over
    /// QUIC on loopback, with OPAQUE logins and SecAgg+ (wall-clock time; no availability or
    /// network model).
    Live {
        /// The experiment file (TOML); the built-in digits experiment when none is given.
        experiment: Option<PathBuf>,
        /// Write metrics.csv, summary.json and plots here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the experiment's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override the number of rounds.
        #[arg(long)]
        rounds: Option<u32>,
        /// Keep the coordinator's and clients' state directories here (default: a temporary
        /// directory, removed at the end).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Query the privacy accountant for planning a task: ε after some rounds of Gaussian noise
    /// with a given noise multiplier, or (with --epsilon) the noise multiplier that ε needs.
    Privacy {
        /// The noise multiplier z (noise standard deviation over the clip norm): print ε.
        #[arg(long, required_unless_present = "epsilon", conflicts_with = "epsilon")]
        noise_multiplier: Option<f64>,
        /// A target ε: print the smallest noise multiplier that meets it.
        #[arg(long)]
        epsilon: Option<f64>,
        /// The Poisson sampling rate q in (0, 1]. 1 (the default) claims no amplification by
        /// sampling, which is how Cohort accounts its own tasks: its coordinator's selection is
        /// not Poisson sampling.
        #[arg(long, default_value_t = 1.0)]
        sampling_rate: f64,
        /// The number of rounds T.
        #[arg(long)]
        rounds: u64,
        /// δ, in (0, 1); below 1/n for n contributors.
        #[arg(long)]
        delta: f64,
    },
    /// Study the contributor ledger: each client's ledger credit beside its true contribution
    /// (leave-one-out per round, which only a simulator can measure), their rank correlation,
    /// and how free-riders and noisy clients fare.
    Contribution {
        /// The experiment file (TOML); the built-in digits experiment when none is given.
        experiment: Option<PathBuf>,
        /// Partition the data Dirichlet(ALPHA) by label instead of the experiment's partition
        /// (0.1 is strongly skewed).
        #[arg(long)]
        dirichlet: Option<f64>,
        /// Clients 0..N upload zeros and report the task's largest weight.
        #[arg(long, default_value_t = 1)]
        free_riders: usize,
        /// The next N clients upload noise of an honest update's norm.
        #[arg(long, default_value_t = 1)]
        noisy: usize,
        /// Write contribution.json here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the experiment's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override the number of rounds.
        #[arg(long)]
        rounds: Option<u32>,
        /// Override the trainer.
        #[arg(long, value_enum)]
        trainer: Option<TrainerKind>,
    },
    /// Check an experiment file and print the resolved experiment.
    Check {
        /// The experiment file.
        experiment: PathBuf,
    },
    /// Scale benchmarks: wall time per round at 1,000 clients per round (SecAgg+ on and off),
    /// and peak memory with 10,000 clients.
    Bench {
        /// Clients per round for the throughput benchmark.
        #[arg(long, default_value_t = 1000)]
        clients_per_round: u32,
        /// Rounds per throughput measurement.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Clients for the memory benchmark (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        memory_clients: u32,
        /// Only the memory benchmark, in this process (used by `bench` itself in a child).
        #[arg(long, hide = true)]
        memory_only: bool,
        /// The trainer to benchmark (default: burn, the default trainer).
        #[arg(long, value_enum, default_value_t = TrainerKind::Burn)]
        trainer: TrainerKind,
        /// Instead of the throughput and memory benchmarks, the SecAgg+ protocol benchmark:
        /// `--clients-per-round` clients with synthetic updates of this many values, with the
        /// default k and t with and without the consistency check, and with Flower's 3 shares
        /// and threshold 2 (k = 2, t = 2, no check).
        #[arg(long)]
        synthetic_parameters: Option<u64>,
        /// Protocol benchmark: `secagg.value_bits` (default the task's, 16). The ring has
        /// value bits + ⌈log2(N × max weight)⌉ bits; `--value-bits 24` at N = 200 (22 at
        /// N = 1,000) with `--max-weight 1` is the full 32-bit ring of unpacked uploads.
        #[arg(long)]
        value_bits: Option<u8>,
        /// Protocol benchmark: `secagg.max_weight` (default 2^16 / N, as the throughput
        /// benchmark; 1 is the task default, an unweighted mean).
        #[arg(long)]
        max_weight: Option<u32>,
        /// Protocol benchmark: only the default parameters with the consistency check (skip
        /// the runs without it and with Flower's k and t).
        #[arg(long)]
        only_default: bool,
        /// Clients per burn step for a dense model (`run.group_size`); 1 trains them one at a
        /// time (the path before grouped training).
        #[arg(long, default_value_t = cohort_sim::config::DEFAULT_GROUP_SIZE)]
        group_size: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Live mode runs a coordinator and its clients in this process: their per-connection logs
    // would drown the round lines, so only the simulator's own logs show unless RUST_LOG says
    // otherwise.
    let default_filter = match cli.command {
        Command::Live { .. } => "warn,cohort_sim=info",
        _ => "info",
    };
    cli.log.init(default_filter);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pct(a: Option<f32>) -> String {
    a.map_or_else(|| "n/a".into(), |a| format!("{:.2}%", a * 100.0))
}

fn print_contribution(r: &contribution::ContributionReport) {
    let rho = |x: Option<f64>| x.map_or_else(|| "n/a".into(), |x| format!("{x:.3}"));
    println!(
        "{} ({}): {} rounds, {} clients per round, final accuracy {}",
        r.experiment,
        r.partition,
        r.rounds,
        r.clients_per_round,
        pct(Some(r.final_accuracy))
    );
    println!(
        "ledger credit against leave-one-out contribution: Spearman {} over {} clients ({} over the honest ones)",
        rho(r.spearman),
        r.standings.len(),
        rho(r.spearman_honest)
    );
    for f in &r.findings {
        let kind = match f.behaviour {
            contribution::Behaviour::FreeRider => "free-rider",
            contribution::Behaviour::Noisy => "noisy client",
            contribution::Behaviour::Honest => "honest client",
        };
        println!(
            "{kind}: ledger credit {:.5} per round (honest median {:.5}: {}); leave-one-out {:+.5} (honest median {:+.5}: {})",
            f.ledger_credit_per_round,
            f.honest_median_ledger_credit_per_round,
            if f.ledger_tells() {
                "below"
            } else {
                "NOT below"
            },
            f.leave_one_out_per_round,
            f.honest_median_leave_one_out_per_round,
            if f.leave_one_out_tells() {
                "below"
            } else {
                "NOT below"
            },
        );
    }
}

#[cfg(feature = "live")]
fn live(exp: &Experiment, out: Option<PathBuf>, state_dir: Option<PathBuf>) -> anyhow::Result<()> {
    use cohort_coordinator::scheduler::TaskEvent;
    use cohort_sim::live::{LiveOptions, run_live};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let options = LiveOptions { state_dir };
    println!(
        "live: {} edge clients over QUIC on loopback, {} per round, SecAgg+ {}",
        exp.population.num_clients,
        exp.task.selection.clients_per_round,
        if exp.task.secagg.enabled { "on" } else { "off" }
    );
    let result = runtime.block_on(run_live(exp, &options, out.as_deref(), |event| {
        match event {
            TaskEvent::RoundCompleted {
                round,
                contributors,
                dropped,
                evaluation,
                federated_evaluation,
                took,
                ..
            } => println!(
                "round {round}: {contributors} updates summed, {dropped} dropped, test accuracy {}, on-device accuracy of the starting model {} ({:.2} s)",
                pct(evaluation.map(|(_, a)| a)),
                pct(federated_evaluation.as_ref().map(|f| f.accuracy)),
                took.as_secs_f64()
            ),
            TaskEvent::RoundAborted { round, reason, .. } => {
                println!("round {round}: attempt aborted ({reason}); retrying")
            }
            TaskEvent::TaskFinished { .. } => {}
        }
    }))?;
    let s = &result.summary;
    println!(
        "{} (live): {} rounds, final accuracy {}, best {}; {} aborted attempt(s); {:.1} s of rounds after {:.1} s of setup",
        s.name,
        s.rounds,
        pct(s.final_accuracy),
        pct(s.best_accuracy),
        s.aborted_attempts,
        s.wall_s,
        s.setup_s
    );
    if let Some(dir) = out {
        println!(
            "wrote metrics.csv, summary.json and plots to {}",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(not(feature = "live"))]
fn live(_: &Experiment, _: Option<PathBuf>, _: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::bail!(
        "this cohort-sim was built without live mode; rebuild it with the `live` feature: \
         cargo run -p cohort-sim --features live -- live"
    )
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            experiment,
            out,
            seed,
            rounds,
            trainer,
        } => {
            let mut exp = match &experiment {
                Some(path) => Experiment::from_file(path)?,
                None => {
                    tracing::info!(
                        "no experiment file given: running the built-in digits experiment with SecAgg+"
                    );
                    Experiment::default_experiment()
                }
            };
            if let Some(s) = seed {
                exp.run.seed = s;
            }
            if let Some(t) = trainer {
                exp.run.trainer = t;
            }
            if let Some(r) = rounds {
                exp.task.rounds = r;
            }
            exp.validate()?;
            let result = run_experiment(&exp, out.as_deref(), true)?;
            let s = &result.summary;
            println!(
                "{}: {} rounds, final accuracy {} (initial {}), best {}; {} aborted attempt(s), {} dropout(s); simulated {:.1} s in {:.2} s wall",
                s.name,
                s.rounds,
                pct(s.final_accuracy),
                pct(Some(s.initial_accuracy)),
                pct(s.best_accuracy),
                s.aborted_attempts,
                s.dropouts,
                s.sim_time_s,
                s.wall_s
            );
            if let Some(t) = s.target_accuracy {
                match s.rounds_to_target {
                    Some(r) => println!("reached {} in {r} rounds", pct(Some(t))),
                    None => println!("did not reach {} in {} rounds", pct(Some(t)), s.rounds),
                }
            }
            match out {
                Some(dir) => println!(
                    "wrote metrics.csv, summary.json and plots to {}",
                    dir.display()
                ),
                None => println!("pass --out DIR to write metrics.csv, summary.json and plots"),
            }
        }
        Command::Sweep { files, out, seed } => {
            let mut runs = Vec::new();
            for f in &files {
                runs.extend(sweep::expand(f)?);
            }
            let mut results = Vec::new();
            let mut epsilon_points = Vec::new();
            for (i, r) in runs.iter().enumerate() {
                let mut exp = r.experiment.clone();
                if let Some(s) = seed {
                    exp.run.seed = s;
                }
                let dir = out.join(sweep::folder_name(i, &r.label));
                let res = run_experiment(&exp, Some(&dir), true)?;
                println!(
                    "{:<40} final {} best {} rounds-to-target {}",
                    r.label,
                    pct(res.summary.final_accuracy),
                    pct(res.summary.best_accuracy),
                    res.summary
                        .rounds_to_target
                        .map_or_else(|| "-".into(), |x| x.to_string())
                );
                epsilon_points.push(EpsilonPoint {
                    mode: res
                        .summary
                        .privacy
                        .as_ref()
                        .map_or_else(|| "no DP".to_string(), |p| p.mode.clone()),
                    epsilon: res
                        .summary
                        .privacy
                        .as_ref()
                        .map_or(0.0, |p| p.epsilon_spent),
                    accuracy: res.summary.final_accuracy.unwrap_or(0.0),
                });
                results.push((r.label.clone(), res.rows));
            }
            if let Some(chart) = accuracy_vs_epsilon(&epsilon_points) {
                chart.write(&out, "accuracy_vs_epsilon")?;
                for ((label, _), p) in results.iter().zip(&epsilon_points) {
                    println!(
                        "{label:<40} {:<12} epsilon {:>8.3} final {:.2}%",
                        p.mode,
                        p.epsilon,
                        p.accuracy * 100.0
                    );
                }
            }
            let series: Vec<(String, &[_])> = results
                .iter()
                .map(|(l, rows)| (l.clone(), rows.as_slice()))
                .collect();
            write_plots(&out, &series)?;
            println!(
                "wrote {} runs and combined plots to {}",
                results.len(),
                out.display()
            );
        }
        Command::Live {
            experiment,
            out,
            seed,
            rounds,
            state_dir,
        } => {
            let mut exp = match &experiment {
                Some(path) => Experiment::from_file(path)?,
                None => Experiment::default_experiment(),
            };
            if let Some(s) = seed {
                exp.run.seed = s;
            }
            if let Some(r) = rounds {
                exp.task.rounds = r;
            }
            exp.validate()?;
            live(&exp, out, state_dir)?;
        }
        Command::Privacy {
            noise_multiplier,
            epsilon,
            sampling_rate,
            rounds,
            delta,
        } => {
            use cohort_privacy::query::{PrivacyQuery, QueryNoise, answer};
            let noise = match (noise_multiplier, epsilon) {
                (Some(z), None) => QueryNoise::NoiseMultiplier(z),
                (None, Some(e)) => QueryNoise::Epsilon(e),
                // clap requires exactly one of the two.
                _ => anyhow::bail!("give exactly one of --noise-multiplier and --epsilon"),
            };
            let reply = answer(&PrivacyQuery {
                noise,
                sampling_rate,
                rounds,
                delta,
            })?;
            print!("{reply}");
        }
        Command::Contribution {
            experiment,
            dirichlet,
            free_riders,
            noisy,
            out,
            seed,
            rounds,
            trainer,
        } => {
            let mut exp = match &experiment {
                Some(path) => Experiment::from_file(path)?,
                None => Experiment::default_experiment(),
            };
            if let Some(alpha) = dirichlet {
                exp.data.partition = cohort_datasets::PartitionSpec::Dirichlet { alpha };
            }
            if let Some(s) = seed {
                exp.run.seed = s;
            }
            if let Some(r) = rounds {
                exp.task.rounds = r;
            }
            if let Some(t) = trainer {
                exp.run.trainer = t;
            }
            exp.validate()?;
            let setup = cohort_sim::setup::build(&exp)?;
            let report = contribution::study(
                &exp,
                &*setup.trainer,
                &setup.partitions,
                contribution::Adversaries { free_riders, noisy },
            )?;
            print_contribution(&report);
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir)?;
                let path = dir.join("contribution.json");
                std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
                println!("wrote {}", path.display());
            }
        }
        Command::Check { experiment } => {
            let exp = Experiment::from_file(&experiment)?;
            print!("{}", exp.to_toml()?);
            // The privacy plan, as TOML comments (ε, noise, rounds, bits), when the model's
            // size is known without the data.
            if let Some(dim) = exp.known_model_dim()
                && let Some(plan) = exp.privacy_plan(dim)?
            {
                println!("\n# differential privacy, for {dim} parameters:");
                for line in plan.to_string().lines() {
                    println!("# {line}");
                }
            }
        }
        Command::Bench {
            clients_per_round,
            rounds,
            memory_clients,
            memory_only,
            trainer,
            synthetic_parameters,
            value_bits,
            max_weight,
            only_default,
            group_size,
        } => {
            if let Some(d) = synthetic_parameters {
                println!(
                    "bench: SecAgg+ protocol, synthetic trainer, {} worker thread(s), load average before: {}",
                    cohort_sim::parallel::worker_threads(0),
                    bench::loadavg()
                );
                let flower = cohort_sim::config::ForcedGraph { k: 2, t: 2 };
                let configs = [(None, true), (None, false), (Some(flower), false)];
                let configs = if only_default {
                    &configs[..1]
                } else {
                    &configs[..]
                };
                let encoding = bench::BenchEncoding {
                    value_bits,
                    max_weight,
                };
                for &(forced, check) in configs {
                    let p = bench::protocol_with(
                        clients_per_round,
                        d,
                        rounds,
                        forced,
                        check,
                        encoding,
                    )?;
                    println!(
                        "protocol: N = {}, d = {}, {} (k = {}, t = {}), {} value bits, ring {} bits: {:.3} s wall per round (min {:.3}), {:.0} bytes up per client",
                        p.clients_per_round,
                        p.parameters,
                        match (forced.is_some(), check) {
                            (true, _) => "forced graph (comparison only)",
                            (false, true) => "default parameters, consistency check on",
                            (false, false) => "default parameters, consistency check off",
                        },
                        p.graph.map_or(0, |g| g.k),
                        p.graph.map_or(0, |g| g.t),
                        p.value_bits,
                        p.ring_bits,
                        p.wall_s_per_round,
                        p.wall_s_min,
                        p.bytes_up_per_client
                    );
                }
                println!("bench: load average after: {}", bench::loadavg());
                return Ok(());
            }
            if memory_only {
                let m = bench::memory(memory_clients, 2, trainer)?;
                println!("{}", serde_json::to_string(&m)?);
                return Ok(());
            }
            println!(
                "bench: trainer {}, group size {group_size}, {} worker thread(s), load average before: {}",
                trainer.name(),
                cohort_sim::parallel::worker_threads(0),
                bench::loadavg()
            );
            for secagg in [false, true] {
                let t = bench::throughput(clients_per_round, rounds, secagg, trainer, group_size)?;
                println!(
                    "throughput: {} clients/round (digits MLP 64-32-10, the training set {}× so about {} examples per client, Dirichlet 0.5, E=1, B=32, lr 0.05, {}), SecAgg+ {}: {:.3} s wall per round (min {:.3}), {:.1} s simulated per round, accuracy {}",
                    t.clients_per_round,
                    bench::digits_repeat(t.clients_per_round),
                    bench::EXAMPLES_PER_CLIENT,
                    trainer.name(),
                    if t.secagg { "on " } else { "off" },
                    t.wall_s_per_round,
                    t.wall_s_min,
                    t.sim_s_per_round,
                    pct(t.final_accuracy)
                );
            }
            if memory_clients > 0 {
                let exe = std::env::current_exe()?;
                let output = std::process::Command::new(exe)
                    .args([
                        "bench",
                        "--memory-only",
                        "--memory-clients",
                        &memory_clients.to_string(),
                        "--trainer",
                        trainer.name(),
                    ])
                    .output()?;
                let text = String::from_utf8_lossy(&output.stdout);
                let line = text.lines().last().unwrap_or_default();
                match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(v) => println!(
                        "memory: {} clients ({}), {} per round: peak RSS {:.1} MiB",
                        v["num_clients"],
                        v["dataset"].as_str().unwrap_or("?"),
                        v["clients_per_round"],
                        v["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0
                    ),
                    Err(_) => anyhow::bail!(
                        "the memory benchmark failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    ),
                }
            }
            println!("bench: load average after: {}", bench::loadavg());
        }
    }
    Ok(())
}
