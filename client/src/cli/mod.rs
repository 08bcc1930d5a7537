//! The `jobctl` command: parse, call, print, exit.

mod args;
mod error;
mod render;
mod schedule;
mod watch;

use std::io::{self, Read as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use jobctl_client::Client;
use serde_json::Value;

use args::{Cli, Command, ConnectArgs, JobsCommand, Output, PayloadSource, QueueCommand};
use error::CliError;
use jobctl_client::proto::v1 as pb;

/// What a command prints: its answer on stdout, and perhaps a note for
/// people on stderr (such as the next page token).
struct Printed {
    stdout: String,
    note: Option<String>,
    /// The exit code when all was printed.
    code: u8,
}

impl Printed {
    fn new(output: Output, human: impl FnOnce() -> String, json: impl FnOnce() -> Value) -> Self {
        let stdout = match output {
            Output::Human => human(),
            Output::Json => format!("{}\n", json()),
        };
        Printed {
            stdout,
            note: None,
            code: 0,
        }
    }

    /// Nothing more to print (a watch printed as it went), and its code.
    fn exit(code: u8) -> Self {
        Printed {
            stdout: String::new(),
            note: None,
            code,
        }
    }
}

pub fn main() -> ExitCode {
    // Prints help, version and usage errors itself, exiting 0 or 2.
    let cli = Cli::parse();
    match execute(cli) {
        Ok(printed) => {
            if let Some(note) = printed.note {
                let _ = writeln!(io::stderr(), "{note}");
            }
            match write_stdout(&printed.stdout) {
                Ok(()) => ExitCode::from(printed.code),
                Err(code) => code,
            }
        }
        Err(err) => {
            let _ = writeln!(io::stderr(), "error: {}", err.one_line());
            ExitCode::from(err.exit_code())
        }
    }
}

fn write_stdout(text: &str) -> Result<(), ExitCode> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        // The reader went away (`jobctl failed q | head`): not our failure.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => {
            let _ = writeln!(io::stderr(), "error: cannot write the output: {err}");
            Err(ExitCode::from(error::code::OTHER))
        }
    }
}

fn execute(cli: Cli) -> Result<Printed, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<Printed, CliError> {
    let output = cli.output;
    match cli.command {
        Command::Submit(args) => {
            // Check the flags before reading a payload or dialling.
            args.options(Vec::new()).map_err(CliError::Usage)?;
            let payload = read_payload(args.payload.source())?;
            let options = args.options(payload).map_err(CliError::Usage)?;
            let client = connect(&cli.server, &cli.connection).await?;
            let submitted = client.submit(options).await?;
            if args.watch {
                // stdout is for the watch; the id goes to stderr.
                let _ = io::stderr().write_all(render::submitted_human(&submitted).as_bytes());
                let code = watch::follow(&client, &submitted.job_id, 0, output).await?;
                return Ok(Printed::exit(code));
            }
            Ok(Printed::new(
                output,
                || render::submitted_human(&submitted),
                || render::submitted_json(&submitted),
            ))
        }
        Command::Status { job_id } => {
            let client = connect(&cli.server, &cli.connection).await?;
            let job = client
                .status(&job_id)
                .await
                .map_err(CliError::about_job(&job_id))?;
            Ok(Printed::new(
                output,
                || render::job_human(&job),
                || render::job_json(&job),
            ))
        }
        Command::Cancel { job_id, reason } => {
            let client = connect(&cli.server, &cli.connection).await?;
            let answer = client
                .cancel(&job_id, &reason)
                .await
                .map_err(CliError::about_job(&job_id))?;
            Ok(Printed::new(
                output,
                || render::cancel_human(&job_id, answer.state, answer.cancel_requested),
                || render::cancel_json(&job_id, answer.state, answer.cancel_requested),
            ))
        }
        Command::Failed {
            queue,
            limit,
            page_token,
            all,
        } => {
            let client = connect(&cli.server, &cli.connection).await?;
            let mut token = page_token.unwrap_or_default();
            let mut jobs = Vec::new();
            loop {
                let page = client
                    .list_failed(&queue, limit.unwrap_or(0), &token)
                    .await?;
                jobs.extend(page.jobs);
                token = page.next_page_token;
                if !all || token.is_empty() {
                    break;
                }
            }
            let mut printed = Printed::new(
                output,
                || render::failed_table(&queue, &jobs),
                || render::jobs_json(&jobs),
            );
            if !token.is_empty() {
                printed.note = Some(format!("more: --page-token {token}"));
            }
            Ok(printed)
        }
        Command::Requeue { job_id } => {
            let client = connect(&cli.server, &cli.connection).await?;
            let state = client
                .requeue(&job_id)
                .await
                .map_err(CliError::about_job(&job_id))?;
            Ok(Printed::new(
                output,
                || render::requeue_human(&job_id, state),
                || render::requeue_json(&job_id, state),
            ))
        }
        Command::Watch(args) => {
            let client = connect(&cli.server, &cli.connection).await?;
            let code = watch::follow(&client, &args.job_id, args.after_seq, output).await?;
            Ok(Printed::exit(code))
        }
        Command::Schedule(command) => {
            schedule::run(command, &cli.server, &cli.connection, output).await
        }
        Command::Jobs(JobsCommand::List(args)) => {
            let client = connect(&cli.server, &cli.connection).await?;
            let args = *args;
            let filter = pb::JobFilter {
                states: args.states,
                kind: args.kind.unwrap_or_default(),
                labels: args.labels.into_iter().collect(),
                created_after: args.after.map(prost_types::Timestamp::from),
                created_before: args.before.map(prost_types::Timestamp::from),
            };
            let order = if args.oldest_first {
                pb::ListOrder::OldestFirst
            } else {
                pb::ListOrder::NewestFirst
            };
            let mut token = args.page_token.unwrap_or_default();
            let mut jobs = Vec::new();
            loop {
                let page = client
                    .list_jobs(pb::ListJobsRequest {
                        queue: args.queue.clone(),
                        filter: Some(filter.clone()),
                        order: order.into(),
                        page_size: args.limit.unwrap_or(0),
                        page_token: token,
                    })
                    .await?;
                jobs.extend(page.jobs);
                token = page.next_page_token;
                if !args.all || token.is_empty() {
                    break;
                }
            }
            let mut printed = Printed::new(
                output,
                || render::jobs_table(&args.queue, &jobs),
                || render::jobs_json(&jobs),
            );
            if !token.is_empty() {
                printed.note = Some(format!("more: --page-token {token}"));
            }
            Ok(printed)
        }
        Command::Jobs(JobsCommand::Delete { job_id }) => {
            let client = connect(&cli.server, &cli.connection).await?;
            client
                .delete_job(&job_id)
                .await
                .map_err(CliError::about_job(&job_id))?;
            Ok(Printed::new(
                output,
                || format!("deleted job {job_id}\n"),
                || serde_json::json!({ "job_id": job_id, "deleted": true }),
            ))
        }
        Command::Queue(QueueCommand::Pause { queue }) => {
            let client = connect(&cli.server, &cli.connection).await?;
            client.pause_queue(&queue).await?;
            Ok(Printed::new(
                output,
                || format!("paused queue {queue}\n"),
                || serde_json::json!({ "queue": queue, "paused": true }),
            ))
        }
        Command::Queue(QueueCommand::Resume { queue }) => {
            let client = connect(&cli.server, &cli.connection).await?;
            client.resume_queue(&queue).await?;
            Ok(Printed::new(
                output,
                || format!("resumed queue {queue}\n"),
                || serde_json::json!({ "queue": queue, "paused": false }),
            ))
        }
        Command::Queue(QueueCommand::List) => {
            let client = connect(&cli.server, &cli.connection).await?;
            let queues = client.list_queues().await?;
            Ok(Printed::new(
                output,
                || render::queues_table(&queues),
                || serde_json::Value::Array(queues.iter().map(render::stats_json).collect()),
            ))
        }
        Command::Stats { queue } => {
            let client = connect(&cli.server, &cli.connection).await?;
            let stats = client.queue_stats(&queue).await?;
            Ok(Printed::new(
                output,
                || render::stats_human(&stats),
                || render::stats_json(&stats),
            ))
        }
    }
}

async fn connect(server: &str, connection: &ConnectArgs) -> Result<Client, CliError> {
    let options = connection.options().map_err(CliError::Input)?;
    Ok(Client::connect_with(server, options).await?)
}

fn read_payload(source: PayloadSource) -> Result<Vec<u8>, CliError> {
    match source {
        PayloadSource::Empty => Ok(Vec::new()),
        PayloadSource::Inline(bytes) => Ok(bytes),
        PayloadSource::File(path) => std::fs::read(&path).map_err(|err| {
            CliError::Input(format!(
                "cannot read payload file '{}': {err}",
                path.display()
            ))
        }),
        PayloadSource::Stdin => {
            let mut bytes = Vec::new();
            io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|err| CliError::Input(format!("cannot read payload from stdin: {err}")))?;
            Ok(bytes)
        }
    }
}
