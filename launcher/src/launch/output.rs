//! The ranks' output and the launcher's own messages. Every line a rank writes to stdout goes to
//! the launcher's stdout as `[rank R] line`, stderr to stderr likewise, and with `--log-dir` also,
//! unprefixed, to the rank's log file.
//!
//! One writer thread owns the launcher's stdout, stderr and the log files; the tasks that read
//! the ranks' pipes hand it whole lines through a bounded queue. So lines never interleave
//! mid-line, a slow terminal slows the ranks' output (not the launcher's supervision), and the
//! launcher's messages come in order with the ranks' lines.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

/// The longest line passed on whole; longer ones are cut into pieces of this size, each its own
/// line (a rank that writes megabytes without a newline must not fill the launcher's memory).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Lines queued for the writer thread before the readers wait.
const QUEUE_LINES: usize = 4096;

/// Which of a rank's streams a line came from (and which of the launcher's it goes to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A rank's log file, shared by the readers of its two streams.
pub type LogFile = Arc<File>;

enum Message {
    Line {
        rank: usize,
        stream: Stream,
        bytes: Vec<u8>,
        log: Option<LogFile>,
    },
    /// A line of the launcher's own, to stderr.
    Note(String),
    /// A line for a log file only (the attempt header).
    LogOnly { file: LogFile, text: String },
}

/// The writer thread. Dropping the last [`Sink`] and calling [`Output::finish`] flushes it.
pub struct Output {
    sink: Option<Sink>,
    writer: Option<JoinHandle<()>>,
}

/// Where lines go: cheap to clone, one per reader task.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<Message>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl Output {
    /// A writer thread for the launcher's stdout and stderr.
    pub fn start() -> Output {
        Output::with_writers(Box::new(std::io::stdout()), Box::new(std::io::stderr()))
    }

    /// A writer thread for `out` and `err` (tests pass buffers).
    pub fn with_writers(mut out: Box<dyn Write + Send>, mut err: Box<dyn Write + Send>) -> Output {
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE_LINES);
        let writer = std::thread::Builder::new()
            .name("nabla-launch-output".into())
            .spawn(move || {
                // Write errors (a closed stdout, a full disk) are ignored: the ranks go on.
                while let Some(message) = rx.blocking_recv() {
                    match message {
                        Message::Line {
                            rank,
                            stream,
                            bytes,
                            log,
                        } => {
                            let line = prefixed(rank, &bytes);
                            let to = match stream {
                                Stream::Stdout => &mut out,
                                Stream::Stderr => &mut err,
                            };
                            let _ = to.write_all(&line).and_then(|_| to.flush());
                            if let Some(mut file) = log.as_deref() {
                                let _ = file.write_all(&terminated(bytes));
                            }
                        }
                        Message::Note(text) => {
                            let _ = err.write_all(format!("{text}\n").as_bytes()).and_then(|_| err.flush());
                        }
                        Message::LogOnly { file, text } => {
                            let _ = (&*file).write_all(format!("{text}\n").as_bytes());
                        }
                    }
                }
                let _ = out.flush();
                let _ = err.flush();
            })
            .expect("cannot start the output thread");
        Output {
            sink: Some(Sink { tx }),
            writer: Some(writer),
        }
    }

    /// A handle to send lines with.
    pub fn sink(&self) -> Sink {
        self.sink.clone().expect("the output is running")
    }

    /// Waits until every line sent so far is written. Every other [`Sink`] must be dropped first
    /// (or this waits for them).
    pub fn finish(mut self) {
        self.sink = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// `[rank R] ` and the line (invalid UTF-8 replaced), with exactly one newline.
fn prefixed(rank: usize, bytes: &[u8]) -> Vec<u8> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    format!("[rank {rank}] {}\n", String::from_utf8_lossy(body)).into_bytes()
}

/// The line as written, with a newline added when it had none.
fn terminated(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() != Some(&b'\n') {
        bytes.push(b'\n');
    }
    bytes
}

impl Sink {
    /// Writes a line of the launcher's own to stderr (in order with the ranks' lines).
    pub async fn note(&self, text: impl Into<String>) {
        let text = text.into();
        if let Err(e) = self.tx.send(Message::Note(text)).await {
            // The writer is gone (only while shutting down): write directly.
            if let Message::Note(t) = e.0 {
                eprintln!("{t}");
            }
        }
    }

    /// [`note`](Self::note) for code that cannot wait (the store's logger): when the queue is
    /// full, the line goes straight to stderr.
    pub fn note_now(&self, text: &str) {
        if self.tx.try_send(Message::Note(text.to_string())).is_err() {
            eprintln!("{text}");
        }
    }

    /// Writes `text` as a line of `file` only, in order with the lines queued before it.
    pub async fn log_only(&self, file: &LogFile, text: impl Into<String>) {
        let _ = self
            .tx
            .send(Message::LogOnly {
                file: file.clone(),
                text: text.into(),
            })
            .await;
    }

    async fn line(&self, rank: usize, stream: Stream, bytes: Vec<u8>, log: &Option<LogFile>) -> bool {
        self.tx
            .send(Message::Line {
                rank,
                stream,
                bytes,
                log: log.clone(),
            })
            .await
            .is_ok()
    }
}

/// Reads one line of `rd` into `line`: up to and with a newline, to EOF, or `MAX_LINE_BYTES`.
/// Returns the bytes read (0 at EOF).
async fn read_line_capped<R: AsyncBufRead + Unpin>(rd: &mut R, line: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        let buf = rd.fill_buf().await?;
        if buf.is_empty() {
            return Ok(line.len());
        }
        let room = MAX_LINE_BYTES - line.len();
        let window = &buf[..buf.len().min(room)];
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&window[..=i]);
            rd.consume(i + 1);
            return Ok(line.len());
        }
        let n = window.len();
        line.extend_from_slice(window);
        rd.consume(n);
        if line.len() >= MAX_LINE_BYTES {
            return Ok(line.len());
        }
    }
}

/// Passes every line of `src` (rank `rank`'s `stream`) to `sink` until EOF; a last line without
/// a newline is passed on too.
pub async fn forward<R: AsyncRead + Unpin>(src: R, rank: usize, stream: Stream, log: Option<LogFile>, sink: Sink) {
    let mut rd = BufReader::with_capacity(MAX_LINE_BYTES, src);
    loop {
        let mut line = Vec::new();
        let read = read_line_capped(&mut rd, &mut line).await;
        if !line.is_empty() && !sink.line(rank, stream, line, &log).await {
            return;
        }
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn lines_are_prefixed_partial_lines_flushed_and_bad_utf8_replaced() {
        let (out, err) = (Buffer::default(), Buffer::default());
        let output = Output::with_writers(Box::new(out.clone()), Box::new(err.clone()));
        let sink = output.sink();
        rt().block_on(async {
            let a: &[u8] = b"one\ntwo\n\xff\xfebad\nlast without newline";
            forward(a, 3, Stream::Stdout, None, sink.clone()).await;
            let b: &[u8] = b"oops\n";
            forward(b, 0, Stream::Stderr, None, sink.clone()).await;
            sink.note("nabla-launch: a note").await;
        });
        drop(sink);
        output.finish();
        assert_eq!(
            out.text(),
            "[rank 3] one\n[rank 3] two\n[rank 3] \u{fffd}\u{fffd}bad\n[rank 3] last without newline\n"
        );
        assert_eq!(err.text(), "[rank 0] oops\nnabla-launch: a note\n");
    }

    #[test]
    fn long_lines_are_cut_and_logs_get_the_raw_lines() {
        let (out, err) = (Buffer::default(), Buffer::default());
        let output = Output::with_writers(Box::new(out.clone()), Box::new(err.clone()));
        let sink = output.sink();
        let path = std::env::temp_dir().join(format!("nabla-launch-output-test-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let file: LogFile = Arc::new(File::create(&path).unwrap());
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        rt().block_on(async {
            sink.log_only(&file, "== header ==").await;
            forward(&long[..], 1, Stream::Stdout, Some(file.clone()), sink.clone()).await;
            let b: &[u8] = b"\xffraw\n";
            forward(b, 1, Stream::Stderr, Some(file.clone()), sink.clone()).await;
        });
        drop(sink);
        output.finish();
        let lines: Vec<String> = out.text().lines().map(String::from).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), "[rank 1] ".len() + MAX_LINE_BYTES);
        assert_eq!(lines[1], format!("[rank 1] {}", "x".repeat(10)));
        let logged = std::fs::read(&path).unwrap();
        let mut want = b"== header ==\n".to_vec();
        want.extend_from_slice(&long[..MAX_LINE_BYTES]);
        want.push(b'\n');
        want.extend_from_slice(b"xxxxxxxxxx\n\xffraw\n");
        assert_eq!(logged, want);
        let _ = std::fs::remove_file(&path);
    }
}
