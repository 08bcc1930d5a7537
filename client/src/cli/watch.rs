//! `jobctl watch` (and `submit --watch`): follow a job's events to its end.

use std::io::{self, IsTerminal as _, Write as _};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jobctl_client::{Client, JobEvent, is_terminal};

use super::args::Output;
use super::error::{CliError, exit_code_for_state};
use super::render::{self, Outcome};

/// Bar positions per percent: the bar moves in tenths of a percent.
const STEPS_PER_PERCENT: f64 = 10.0;
const BAR_TEMPLATE: &str = "{spinner:.green} [{elapsed_precise}] [{bar:24.cyan/blue}] {wide_msg}";

/// Follows `job_id` after `after_seq` and prints as `output` says; returns
/// the exit code of the job's outcome.
pub async fn follow(
    client: &Client,
    job_id: &str,
    after_seq: u64,
    output: Output,
) -> Result<u8, CliError> {
    let mut watch = client
        .watch(job_id, after_seq)
        .await
        .map_err(CliError::about_job(job_id))?;
    let mut view = View::new(output, io::stderr().is_terminal());
    let mut outcome = None;
    loop {
        let next = tokio::select! {
            next = watch.next() => next,
            _ = tokio::signal::ctrl_c() => {
                view.abandon();
                return Err(CliError::Interrupted {
                    job_id: job_id.to_owned(),
                    last_seq: watch.last_seq(),
                });
            }
        };
        match next {
            Ok(Some(event)) => {
                match view.show(&event) {
                    Ok(()) => {}
                    // The reader of stdout went away (`| head`): stop quietly.
                    Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
                    Err(err) => return Err(CliError::Output(err)),
                }
                if is_terminal(&event) {
                    outcome = Some(Outcome::from(&event));
                }
            }
            Ok(None) => break,
            Err(err) => {
                view.abandon();
                return Err(CliError::watch_of(job_id, watch.last_seq())(err));
            }
        }
    }
    let outcome = match outcome {
        Some(outcome) => outcome,
        // The job ended at or before `after_seq`: nothing was streamed.
        None => Outcome::from(
            &client
                .status(job_id)
                .await
                .map_err(CliError::about_job(job_id))?,
        ),
    };
    view.finish(&outcome).map_err(CliError::Output)?;
    Ok(exit_code_for_state(outcome.state))
}

/// Where the events go.
enum View {
    /// One JSON object per event on stdout.
    Json,
    /// A live bar on stderr (a terminal), state changes printed above it.
    Bar(ProgressBar),
    /// One line per event on stderr (not a terminal).
    Lines,
}

impl View {
    fn new(output: Output, terminal: bool) -> View {
        match output {
            Output::Json => View::Json,
            Output::Human if terminal => {
                let style = ProgressStyle::with_template(BAR_TEMPLATE)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                let bar = ProgressBar::with_draw_target(
                    Some((100.0 * STEPS_PER_PERCENT) as u64),
                    ProgressDrawTarget::stderr(),
                )
                .with_style(style)
                .with_message("waiting for the job's events");
                bar.enable_steady_tick(Duration::from_millis(120));
                View::Bar(bar)
            }
            Output::Human => View::Lines,
        }
    }

    fn show(&mut self, event: &JobEvent) -> io::Result<()> {
        match self {
            View::Json => {
                let mut stdout = io::stdout().lock();
                writeln!(stdout, "{}", render::event_json(event))?;
                stdout.flush()
            }
            View::Lines => writeln!(io::stderr(), "{}", render::plain_event_line(event)),
            View::Bar(bar) => {
                if event.kind() != jobctl_client::EventKind::Progress {
                    bar.println(render::event_line(event));
                }
                if let Some(progress) = &event.progress {
                    let steps = (progress.percent.clamp(0.0, 100.0) * STEPS_PER_PERCENT).round();
                    bar.set_position(steps as u64);
                }
                bar.set_message(render::progress_line(event.state, event.progress.as_ref()));
                Ok(())
            }
        }
    }

    /// Stops drawing, leaving the bar as it is.
    fn abandon(&self) {
        if let View::Bar(bar) = self {
            bar.abandon();
        }
    }

    /// Prints how the job ended (nothing more in JSON: its last event said).
    fn finish(&self, outcome: &Outcome) -> io::Result<()> {
        if let View::Json = self {
            return Ok(());
        }
        self.abandon();
        let (summary, result) = render::outcome_human(outcome);
        io::stderr().write_all(summary.as_bytes())?;
        let mut stdout = io::stdout().lock();
        match stdout
            .write_all(result.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(err),
            _ => Ok(()),
        }
    }
}
