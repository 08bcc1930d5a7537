//! `jobctl schedule …`: periodic schedules (`ScheduleService`).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand, ValueEnum};
use jobctl_client::proto::v1::{
    self as pb, CatchupPolicy, OverlapPolicy, Schedule, ScheduleSpec, schedule_spec::Timing,
};
use serde_json::{Value, json};

use super::args::{ConnectArgs, Output, SubmitArgs, parse_duration, parse_time};
use super::error::CliError;
use super::{Printed, connect, read_payload};

/// `jobctl schedule`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule that submits a job at each fire time.
    ///
    /// Its id is QUEUE:NAME. JSON output: the schedule object.
    Create(Box<CreateArgs>),
    /// List schedules (of one queue with --queue).
    ///
    /// JSON output: an array of schedule objects.
    List {
        #[arg(long)]
        queue: Option<String>,
    },
    /// Show a schedule, its next fire times and its last runs with their
    /// job ids.
    ///
    /// JSON output: {"schedule", "next_fire_times", "recent_runs"}.
    Get {
        /// QUEUE:NAME.
        schedule_id: String,
        /// How many next fire times to show (1 to 100).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        next: u32,
    },
    /// Stop a schedule from firing.
    Pause { schedule_id: String },
    /// Resume a paused schedule from now on.
    Resume { schedule_id: String },
    /// Submit the schedule's job once, now.
    ///
    /// JSON output: {"schedule_id", "job_id"}.
    Trigger { schedule_id: String },
    /// Delete a schedule (the jobs it made stay).
    Delete { schedule_id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Overlap {
    Skip,
    Allow,
    CancelPrevious,
    BufferOne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Catchup {
    SkipMissed,
    RunLatest,
    RunAll,
}

/// `jobctl schedule create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The schedule's name, 1 to 64 characters of [A-Za-z0-9_.-].
    pub name: String,
    /// A cron expression: 5 fields, or 6 with seconds first ("30 2 * * *").
    #[arg(
        long,
        value_name = "EXPR",
        required_unless_present = "every",
        conflicts_with = "every"
    )]
    pub cron: Option<String>,
    /// The cron expression's IANA time zone (Europe/Berlin) [default: UTC].
    #[arg(long, value_name = "ZONE", requires = "cron")]
    pub time_zone: Option<String>,
    /// Fire every this long instead (at least 1s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub every: Option<Duration>,
    /// With --every: fire times at OFFSET + k * EVERY since the epoch.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "every")]
    pub offset: Option<Duration>,
    /// Delay each job by up to this long after its fire time.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub jitter: Option<Duration>,
    /// No fire time before this RFC 3339 time.
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub start: Option<SystemTime>,
    /// No fire time after this RFC 3339 time.
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub end: Option<SystemTime>,
    /// While the previous run has not ended [default: skip].
    #[arg(long, value_enum)]
    pub overlap: Option<Overlap>,
    /// Fire times missed while no replica could fire [default: skip-missed].
    #[arg(long, value_enum)]
    pub catchup: Option<Catchup>,
    /// How late a fire time may be and still run [default: 1m under
    /// skip-missed, no limit under run-all].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub catchup_window: Option<Duration>,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
    /// The job each fire submits: QUEUE KIND and the flags of `jobctl submit`
    /// (not --delay, --run-at, --idempotency-key or --watch).
    #[command(flatten)]
    pub job: SubmitArgs,
}

fn pb_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

impl CreateArgs {
    fn spec(&self, payload: Vec<u8>) -> Result<ScheduleSpec, String> {
        let job = &self.job;
        if job.delay.is_some() || job.run_at.is_some() {
            return Err("a schedule says when its jobs run: no --delay or --run-at".into());
        }
        if job.idempotency_key.is_some() {
            return Err(
                "each fire time's job gets its own idempotency key: no --idempotency-key".into(),
            );
        }
        if job.watch {
            return Err("--watch follows one job: use `jobctl schedule get` instead".into());
        }
        let template = job
            .options(payload)?
            .into_request()
            .map_err(|e| e.to_string())?;
        let timing = match (&self.cron, self.every) {
            (Some(expression), _) => Timing::Cron(pb::CronTiming {
                expression: expression.clone(),
                time_zone: self.time_zone.clone().unwrap_or_default(),
            }),
            (None, Some(every)) => Timing::Interval(pb::IntervalTiming {
                every: pb_duration(every),
                offset: self.offset.and_then(pb_duration),
            }),
            (None, None) => return Err("give --cron or --every".into()),
        };
        Ok(ScheduleSpec {
            timing: Some(timing),
            template: Some(template),
            jitter: self.jitter.and_then(pb_duration),
            start_time: self.start.map(Into::into),
            end_time: self.end.map(Into::into),
            overlap: match self.overlap {
                None => OverlapPolicy::Unspecified,
                Some(Overlap::Skip) => OverlapPolicy::Skip,
                Some(Overlap::Allow) => OverlapPolicy::Allow,
                Some(Overlap::CancelPrevious) => OverlapPolicy::CancelPrevious,
                Some(Overlap::BufferOne) => OverlapPolicy::BufferOne,
            }
            .into(),
            catchup: match self.catchup {
                None => CatchupPolicy::Unspecified,
                Some(Catchup::SkipMissed) => CatchupPolicy::SkipMissed,
                Some(Catchup::RunLatest) => CatchupPolicy::RunLatest,
                Some(Catchup::RunAll) => CatchupPolicy::RunAll,
            }
            .into(),
            catchup_window: self.catchup_window.and_then(pb_duration),
        })
    }
}

/// Runs a `jobctl schedule` command.
pub async fn run(
    command: ScheduleCommand,
    server: &str,
    connection: &ConnectArgs,
    output: Output,
) -> Result<Printed, CliError> {
    let one = |s: Schedule| Printed::new(output, || schedule_human(&s), || schedule_json(&s));
    match command {
        ScheduleCommand::Create(args) => {
            args.spec(Vec::new()).map_err(CliError::Usage)?;
            let payload = read_payload(args.job.payload.source())?;
            let spec = args.spec(payload).map_err(CliError::Usage)?;
            let client = connect(server, connection).await?;
            Ok(one(client
                .create_schedule(&args.name, spec, args.paused)
                .await?))
        }
        ScheduleCommand::List { queue } => {
            let client = connect(server, connection).await?;
            let list = client.list_schedules(queue.as_deref()).await?;
            Ok(Printed::new(
                output,
                || schedules_table(&list),
                || Value::Array(list.iter().map(schedule_json).collect()),
            ))
        }
        ScheduleCommand::Get { schedule_id, next } => {
            let client = connect(server, connection).await?;
            let got = client.get_schedule(&schedule_id, next).await?;
            Ok(Printed::new(output, || get_human(&got), || get_json(&got)))
        }
        ScheduleCommand::Pause { schedule_id } => {
            let client = connect(server, connection).await?;
            Ok(one(client.pause_schedule(&schedule_id).await?))
        }
        ScheduleCommand::Resume { schedule_id } => {
            let client = connect(server, connection).await?;
            Ok(one(client.resume_schedule(&schedule_id).await?))
        }
        ScheduleCommand::Trigger { schedule_id } => {
            let client = connect(server, connection).await?;
            let job_id = client.trigger_schedule(&schedule_id).await?;
            Ok(Printed::new(
                output,
                || format!("{job_id}\n"),
                || json!({ "schedule_id": schedule_id, "job_id": job_id }),
            ))
        }
        ScheduleCommand::Delete { schedule_id } => {
            let client = connect(server, connection).await?;
            client.delete_schedule(&schedule_id).await?;
            Ok(Printed::new(
                output,
                || format!("deleted {schedule_id}\n"),
                || json!({ "schedule_id": schedule_id, "deleted": true }),
            ))
        }
    }
}

fn timing_text(spec: Option<&ScheduleSpec>) -> String {
    match spec.and_then(|s| s.timing.as_ref()) {
        Some(Timing::Cron(c)) if c.time_zone.is_empty() => {
            format!("cron \"{}\" (UTC)", c.expression)
        }
        Some(Timing::Cron(c)) => format!("cron \"{}\" ({})", c.expression, c.time_zone),
        Some(Timing::Interval(i)) => format!(
            "every {}",
            i.every
                .and_then(|d| Duration::try_from(d).ok())
                .map(|d| humantime::format_duration(d).to_string())
                .unwrap_or_default()
        ),
        None => "-".into(),
    }
}

fn policy_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

fn time_text(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn schedule_human(s: &Schedule) -> String {
    let spec = s.spec.as_ref();
    let template = spec.and_then(|s| s.template.as_ref());
    let mut out = String::new();
    let _ = writeln!(out, "schedule:  {}", s.id);
    let _ = writeln!(out, "timing:    {}", timing_text(spec));
    if let Some(t) = template {
        let _ = writeln!(out, "job:       {} on {}", t.kind, t.queue);
    }
    if let Some(spec) = spec {
        let _ = writeln!(
            out,
            "policies:  overlap {}, catch-up {}",
            policy_name(spec.overlap().as_str_name(), "OVERLAP_POLICY_"),
            policy_name(spec.catchup().as_str_name(), "CATCHUP_POLICY_")
        );
    }
    let _ = writeln!(
        out,
        "state:     {}",
        if s.paused { "paused" } else { "active" }
    );
    let _ = writeln!(out, "next:      {}", time_text(s.next_fire_time.as_ref()));
    let _ = writeln!(
        out,
        "runs:      {} fired, {} skipped, {} missed",
        s.fired, s.skipped, s.missed
    );
    out
}

fn schedules_table(list: &[Schedule]) -> String {
    if list.is_empty() {
        return "no schedules\n".into();
    }
    let width = list.iter().map(|s| s.id.len()).max().unwrap_or(0).max(2);
    let mut out = format!("{:<width$}  {:<6}  {:<24}  TIMING\n", "ID", "STATE", "NEXT");
    for s in list {
        let _ = writeln!(
            out,
            "{:<width$}  {:<6}  {:<24}  {}",
            s.id,
            if s.paused { "paused" } else { "active" },
            time_text(s.next_fire_time.as_ref()),
            timing_text(s.spec.as_ref())
        );
    }
    out
}

fn get_human(got: &pb::GetScheduleResponse) -> String {
    let mut out = got
        .schedule
        .as_ref()
        .map(schedule_human)
        .unwrap_or_default();
    if !got.next_fire_times.is_empty() {
        out.push_str("next fire times:\n");
        for t in &got.next_fire_times {
            let _ = writeln!(out, "  {t}");
        }
    }
    if !got.recent_runs.is_empty() {
        out.push_str("last runs:\n");
        for r in &got.recent_runs {
            let _ = writeln!(
                out,
                "  {}  {:<9}  {}",
                time_text(r.fire_time.as_ref()),
                policy_name(r.outcome().as_str_name(), "SCHEDULE_RUN_OUTCOME_"),
                r.job_id
            );
        }
    }
    out
}

fn schedule_json(s: &Schedule) -> Value {
    let spec = s.spec.as_ref();
    let template = spec.and_then(|s| s.template.as_ref());
    let (cron, time_zone, every) = match spec.and_then(|s| s.timing.as_ref()) {
        Some(Timing::Cron(c)) => (Some(c.expression.clone()), Some(c.time_zone.clone()), None),
        Some(Timing::Interval(i)) => (None, None, i.every.map(|d| d.to_string())),
        None => (None, None, None),
    };
    json!({
        "id": s.id,
        "cron": cron,
        "time_zone": time_zone,
        "every": every,
        "queue": template.map(|t| t.queue.clone()),
        "kind": template.map(|t| t.kind.clone()),
        "overlap": spec.map(|s| policy_name(s.overlap().as_str_name(), "OVERLAP_POLICY_")),
        "catchup": spec.map(|s| policy_name(s.catchup().as_str_name(), "CATCHUP_POLICY_")),
        "paused": s.paused,
        "next_fire_time": s.next_fire_time.map(|t| t.to_string()),
        "buffered_fire_time": s.buffered_fire_time.map(|t| t.to_string()),
        "fired": s.fired,
        "skipped": s.skipped,
        "missed": s.missed,
        "created_at": s.created_at.map(|t| t.to_string()),
        "updated_at": s.updated_at.map(|t| t.to_string()),
    })
}

fn get_json(got: &pb::GetScheduleResponse) -> Value {
    json!({
        "schedule": got.schedule.as_ref().map(schedule_json),
        "next_fire_times": got.next_fire_times.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "recent_runs": got.recent_runs.iter().map(|r| json!({
            "fire_time": r.fire_time.map(|t| t.to_string()),
            "outcome": policy_name(r.outcome().as_str_name(), "SCHEDULE_RUN_OUTCOME_"),
            "job_id": r.job_id,
        })).collect::<Vec<_>>(),
    })
}
