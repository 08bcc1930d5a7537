//! The export worker: the handler of `export_csv` jobs.
//!
//! It writes the requested number of rows to `<out-dir>/<job>.csv.part` in
//! chunks. After each chunk it flushes the file to disk, reports progress
//! and saves a checkpoint (rows written and the file's length). A retried
//! attempt finds the checkpoint, cuts the file back to the checkpointed
//! length (dropping anything written after it) and appends from there, so no
//! row is written twice or lost. When the last chunk is in, the file is
//! renamed to `<job>.csv` and its name is the job's result.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jobctl_worker::{CancelReason, HandlerError, JobContext};
use serde::{Deserialize, Serialize};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// The most rows one export may ask for.
pub const MAX_ROWS: u64 = 10_000_000;

/// The CSV header line.
pub const HEADER: &str = "order_id,customer,email,country,total\n";

/// The payload of an `export_csv` job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportRequest {
    /// Rows to export.
    pub rows: u64,
}

/// The checkpoint saved after each chunk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Rows in the file so far.
    pub rows: u64,
    /// The file's length in bytes with those rows (and the header).
    pub bytes: u64,
}

impl Checkpoint {
    /// The checkpoint as saved with jobctl.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A checkpoint saved by [`Checkpoint::encode`].
    pub fn decode(data: &[u8]) -> Option<Checkpoint> {
        serde_json::from_slice(data).ok()
    }
}

/// The handler of `export_csv` jobs, with its settings.
#[derive(Debug, Clone)]
pub struct Exporter {
    /// Where the files go.
    pub out_dir: PathBuf,
    /// Rows per chunk (one progress update and one checkpoint each).
    pub chunk_rows: u64,
    /// A pause per chunk, standing in for the query that produces it.
    pub chunk_delay: Duration,
}

impl Exporter {
    /// Runs one attempt of an export job; the result is the file's name.
    pub async fn run(&self, ctx: JobContext) -> Result<Vec<u8>, HandlerError> {
        let request: ExportRequest = serde_json::from_slice(ctx.payload())
            .map_err(|e| HandlerError::fatal(format!("payload must be {{\"rows\": N}}: {e}")))?;
        if request.rows > MAX_ROWS {
            return Err(HandlerError::fatal(format!(
                "at most {MAX_ROWS} rows, asked for {}",
                request.rows
            )));
        }
        let total = request.rows;
        let name = file_name(ctx.id());
        let part = self.out_dir.join(part_name(&name));
        let resume_from = ctx.checkpoint().and_then(Checkpoint::decode);
        let (mut file, mut at) = open_part(&part, resume_from).await?;
        if resume_from.is_some() {
            tracing::info!(
                job_id = ctx.id(),
                rows = at.rows,
                "resuming the export from its checkpoint"
            );
        }
        ctx.set_progress_units(at.rows, total, progress_message(at.rows, total));

        while at.rows < total {
            // The "query" for the next chunk; a cancel stops it at once.
            tokio::select! {
                () = tokio::time::sleep(self.chunk_delay) => {}
                () = ctx.cancelled() => return Err(self.cancelled(&ctx, &part).await),
            }
            let end = (at.rows + self.chunk_rows).min(total);
            at = append_rows(&mut file, at, end).await?;
            ctx.set_progress_units(at.rows, total, progress_message(at.rows, total));
            if let Err(e) = ctx.checkpoint_now(at.encode()).await {
                if ctx.is_cancelled() {
                    return Err(self.cancelled(&ctx, &part).await);
                }
                return Err(e.into());
            }
        }
        drop(file);
        tokio::fs::rename(&part, self.out_dir.join(&name)).await?;
        tracing::info!(job_id = ctx.id(), rows = total, file = %name, "export written");
        Ok(name.into_bytes())
    }

    /// A cancelled export leaves no half-written file behind, unless the
    /// worker is only shutting down or lost its lease: then the job will
    /// run again and resume from the file.
    async fn cancelled(&self, ctx: &JobContext, part: &Path) -> HandlerError {
        if matches!(ctx.cancel_reason(), Some(CancelReason::Requested { .. })) {
            let _ = tokio::fs::remove_file(part).await;
        }
        HandlerError::cancelled()
    }
}

fn progress_message(rows: u64, total: u64) -> String {
    format!("exported {rows} of {total} rows")
}

/// The file a job's export is written to: its id, with the `:` between
/// queue and ULID made a `-`.
pub fn file_name(job_id: &str) -> String {
    let safe: String = job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{safe}.csv")
}

/// The file an export is written to until it is complete.
pub fn part_name(file_name: &str) -> String {
    format!("{file_name}.part")
}

/// Opens the partial file of an export. With a checkpoint it is cut back to
/// the checkpointed length (anything written after the checkpoint is
/// dropped); without one, or when the file is gone, it starts over with the
/// header.
pub async fn open_part(
    path: &Path,
    resume_from: Option<Checkpoint>,
) -> std::io::Result<(File, Checkpoint)> {
    if let Some(at) = resume_from {
        match OpenOptions::new().write(true).open(path).await {
            Ok(mut file) if file.metadata().await?.len() >= at.bytes => {
                file.set_len(at.bytes).await?;
                file.seek(SeekFrom::Start(at.bytes)).await?;
                return Ok((file, at));
            }
            // Shorter than the checkpoint says (or gone): start over.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut file = File::create(path).await?;
    file.write_all(HEADER.as_bytes()).await?;
    file.sync_data().await?;
    Ok((
        file,
        Checkpoint {
            rows: 0,
            bytes: HEADER.len() as u64,
        },
    ))
}

/// Appends rows `at.rows + 1 ..= end` and makes them durable before the
/// checkpoint that counts them is saved.
pub async fn append_rows(file: &mut File, at: Checkpoint, end: u64) -> std::io::Result<Checkpoint> {
    let mut chunk = String::with_capacity(((end - at.rows) * 64) as usize);
    for id in at.rows + 1..=end {
        push_row(&mut chunk, id);
    }
    file.write_all(chunk.as_bytes()).await?;
    file.sync_data().await?;
    Ok(Checkpoint {
        rows: end,
        bytes: at.bytes + chunk.len() as u64,
    })
}

/// Row `id` of the export: made-up orders, the same for the same id.
fn push_row(out: &mut String, id: u64) {
    use std::fmt::Write as _;
    const COUNTRIES: [&str; 6] = ["DE", "FR", "NL", "PL", "SE", "US"];
    let customer = (id * 7_919) % 10_007;
    let cents = (id * 104_729) % 100_000;
    let country = COUNTRIES[(id % COUNTRIES.len() as u64) as usize];
    let _ = writeln!(
        out,
        "{id},Customer {customer},customer{customer}@example.com,{country},{}.{:02}",
        cents / 100,
        cents % 100
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_make_plain_file_names() {
        assert_eq!(
            file_name("exports:01JD6ZK3Q0ABCDEF"),
            "exports-01JD6ZK3Q0ABCDEF.csv"
        );
        assert_eq!(file_name("../../etc/passwd"), "------etc-passwd.csv");
    }

    #[test]
    fn a_checkpoint_round_trips() {
        let at = Checkpoint {
            rows: 1500,
            bytes: 98_765,
        };
        assert_eq!(Checkpoint::decode(&at.encode()), Some(at));
        assert_eq!(Checkpoint::decode(b"garbage"), None);
    }

    #[tokio::test]
    async fn resuming_drops_rows_written_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv.part");
        let (mut file, at) = open_part(&path, None).await.unwrap();
        let at = append_rows(&mut file, at, 10).await.unwrap();
        let checkpoint = append_rows(&mut file, at, 20).await.unwrap();
        // Written but never checkpointed: a crash between write and checkpoint.
        append_rows(&mut file, checkpoint, 25).await.unwrap();
        drop(file);

        let (mut file, at) = open_part(&path, Some(checkpoint)).await.unwrap();
        assert_eq!(at, checkpoint);
        append_rows(&mut file, at, 30).await.unwrap();
        drop(file);

        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<u64> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ids, (1..=30).collect::<Vec<_>>());
        assert!(text.starts_with(HEADER));
    }

    #[tokio::test]
    async fn a_missing_part_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.csv.part");
        let stale = Checkpoint {
            rows: 100,
            bytes: 5000,
        };
        let (_file, at) = open_part(&path, Some(stale)).await.unwrap();
        assert_eq!(at.rows, 0);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            HEADER,
            "a fresh file holds just the header"
        );
    }
}
