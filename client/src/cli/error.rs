//! How the CLI fails: one line on stderr and an exit code per class.

use std::error::Error as _;

use jobctl_client::JobState;
use tonic::Code;

/// Exit codes; `EXIT_CODES_HELP` and the README document them.
pub mod code {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const INVALID: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const UNAVAILABLE: u8 = 6;
    /// `watch`: the job ended FAILED.
    pub const JOB_FAILED: u8 = 7;
    /// `watch`: the job ended CANCELLED.
    pub const JOB_CANCELLED: u8 = 8;
    /// `watch` was interrupted (Ctrl-C), as shells report SIGINT.
    pub const INTERRUPTED: u8 = 130;
}

/// The exit code of a `watch` whose job ended in `state`: 0 for SUCCEEDED,
/// [`code::JOB_FAILED`], [`code::JOB_CANCELLED`], and [`code::OTHER`] for a
/// state that is not an end (which a finished watch does not report).
pub fn exit_code_for_state(state: i32) -> u8 {
    match JobState::try_from(state) {
        Ok(JobState::Succeeded) => 0,
        Ok(JobState::Failed) => code::JOB_FAILED,
        Ok(JobState::Cancelled) => code::JOB_CANCELLED,
        Ok(JobState::Unspecified | JobState::Scheduled | JobState::Queued | JobState::Running)
        | Err(_) => code::OTHER,
    }
}

/// The exit code for a gRPC status code.
pub fn exit_code_for(status: Code) -> u8 {
    match status {
        Code::NotFound => code::NOT_FOUND,
        Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange => code::INVALID,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => code::REFUSED,
        Code::Unavailable | Code::DeadlineExceeded => code::UNAVAILABLE,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::PermissionDenied
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss
        | Code::Unauthenticated => code::OTHER,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A call failed.
    #[error(transparent)]
    Client(#[from] jobctl_client::Error),
    /// A call about one job answered NOT_FOUND.
    #[error("job '{0}' not found")]
    JobNotFound(String),
    /// Flags that parse but do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// An input named on the command line could not be read.
    #[error("{0}")]
    Input(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// A watch lost the server for longer than its reconnection budget.
    #[error("{source}; resume with: jobctl watch {job_id} --after-seq {last_seq}")]
    WatchBroken {
        job_id: String,
        last_seq: u64,
        source: jobctl_client::Error,
    },
    /// A watch was interrupted.
    #[error("interrupted; resume with: jobctl watch {job_id} --after-seq {last_seq}")]
    Interrupted { job_id: String, last_seq: u64 },
    /// Writing to stdout or stderr failed.
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// `NOT_FOUND` on a call about `job_id` becomes [`CliError::JobNotFound`].
    pub fn about_job(job_id: &str) -> impl FnOnce(jobctl_client::Error) -> CliError {
        move |err| match err {
            jobctl_client::Error::NotFound(_) => CliError::JobNotFound(job_id.to_owned()),
            other => CliError::Client(other),
        }
    }

    /// An error that ended a watch of `job_id` after the event `last_seq`:
    /// a lost server says how to resume, a refusal is classed as usual.
    pub fn watch_of(job_id: &str, last_seq: u64) -> impl FnOnce(jobctl_client::Error) -> CliError {
        move |err| {
            if err.is_retryable() || err.code() == Code::ResourceExhausted {
                CliError::WatchBroken {
                    job_id: job_id.to_owned(),
                    last_seq,
                    source: err,
                }
            } else {
                CliError::about_job(job_id)(err)
            }
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(err) => exit_code_for(err.code()),
            CliError::WatchBroken { .. } => code::UNAVAILABLE,
            CliError::Interrupted { .. } => code::INTERRUPTED,
            CliError::Output(_) => code::OTHER,
            CliError::JobNotFound(_) => code::NOT_FOUND,
            CliError::Usage(_) => code::USAGE,
            CliError::Input(_) => code::INVALID,
            CliError::Runtime(_) => code::OTHER,
        }
    }

    /// The message and its causes on one line, each cause once.
    pub fn one_line(&self) -> String {
        let mut line = self.to_string();
        let mut source = self.source();
        while let Some(err) = source {
            let text = err.to_string();
            // tonic's transport error says only "transport error"; its own
            // source says what happened.
            let says_nothing = text.is_empty() || text == "transport error";
            if !says_nothing && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = err.source();
        }
        line.replace('\n', " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobctl_client::Error;

    #[test]
    fn each_class_has_its_exit_code() {
        let cases = [
            (Error::NotFound("x".into()), 3),
            (Error::InvalidArgument("x".into()), 4),
            (Error::ResourceExhausted("x".into()), 4),
            (Error::FailedPrecondition("x".into()), 5),
            (Error::AlreadyExists("x".into()), 5),
            (Error::Unavailable("x".into()), 6),
            (Error::Unauthenticated("x".into()), 1),
            (Error::PermissionDenied("x".into()), 1),
            (Error::Other(tonic::Status::internal("x")), 1),
            (Error::Other(tonic::Status::deadline_exceeded("x")), 6),
        ];
        for (err, expected) in cases {
            assert_eq!(CliError::Client(err).exit_code(), expected);
        }
        assert_eq!(CliError::JobNotFound("j".into()).exit_code(), 3);
        assert_eq!(CliError::Usage("u".into()).exit_code(), 2);
        assert_eq!(CliError::Input("i".into()).exit_code(), 4);
    }

    #[test]
    fn not_found_about_a_job_names_the_job() {
        let err = CliError::about_job("01J")(Error::NotFound("whatever the server said".into()));
        assert_eq!(err.one_line(), "job '01J' not found");
        let err = CliError::about_job("01J")(Error::FailedPrecondition("job is not failed".into()));
        assert_eq!(err.one_line(), "job is not failed");
        assert_eq!(err.exit_code(), 5);
    }

    #[test]
    fn a_watch_exits_with_its_job_s_outcome() {
        assert_eq!(exit_code_for_state(JobState::Succeeded as i32), 0);
        assert_eq!(exit_code_for_state(JobState::Failed as i32), 7);
        assert_eq!(exit_code_for_state(JobState::Cancelled as i32), 8);
        assert_eq!(exit_code_for_state(JobState::Running as i32), 1);
        assert_eq!(exit_code_for_state(99), 1);
    }

    #[test]
    fn a_lost_watch_says_how_to_resume() {
        let err = CliError::watch_of("01J", 7)(Error::Unavailable("connection refused".into()));
        assert_eq!(
            err.one_line(),
            "server unavailable: connection refused; resume with: jobctl watch 01J --after-seq 7"
        );
        assert_eq!(err.exit_code(), 6);
        let err = CliError::watch_of("01J", 7)(Error::ResourceExhausted("fell behind".into()));
        assert_eq!(err.exit_code(), 6);
        let err = CliError::watch_of("01J", 7)(Error::NotFound("gone".into()));
        assert_eq!(err.one_line(), "job '01J' not found");
        assert_eq!(err.exit_code(), 3);
        let err = CliError::watch_of("01J", 7)(Error::Other(tonic::Status::out_of_range(
            "events after 7 are no longer kept",
        )));
        assert_eq!(err.exit_code(), 4);
        let err = CliError::Interrupted {
            job_id: "01J".into(),
            last_seq: 3,
        };
        assert_eq!(
            err.one_line(),
            "interrupted; resume with: jobctl watch 01J --after-seq 3"
        );
        assert_eq!(err.exit_code(), 130);
    }

    #[test]
    fn causes_are_joined_on_one_line_without_repeats() {
        let io = std::io::Error::other("no threads\nleft");
        let err = CliError::Runtime(io);
        assert_eq!(
            err.one_line(),
            "cannot start the async runtime: no threads left"
        );
    }
}
