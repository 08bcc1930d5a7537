//! How the CLI fails: one line on stderr and an exit code per class.

use std::error::Error as _;

use tonic::Code;

/// Exit codes; `EXIT_CODES_HELP` and the README document them.
pub mod code {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const INVALID: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const UNAVAILABLE: u8 = 6;
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
}

impl CliError {
    /// `NOT_FOUND` on a call about `job_id` becomes [`CliError::JobNotFound`].
    pub fn about_job(job_id: &str) -> impl FnOnce(jobctl_client::Error) -> CliError {
        move |err| match err {
            jobctl_client::Error::NotFound(_) => CliError::JobNotFound(job_id.to_owned()),
            other => CliError::Client(other),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(err) => exit_code_for(err.code()),
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
    fn causes_are_joined_on_one_line_without_repeats() {
        let io = std::io::Error::other("no threads\nleft");
        let err = CliError::Runtime(io);
        assert_eq!(
            err.one_line(),
            "cannot start the async runtime: no threads left"
        );
    }
}
