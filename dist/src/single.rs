//! The communicator of a job with one process: every collective is the identity.

use crate::comm::{CommResult, Communicator, HostBufMut};

/// The communicator of a single process (world size 1): sums and broadcasts leave buffers as
/// they are. What `nb::dist::init` gives when no launcher variables are set.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn name(&self) -> &'static str {
        "single"
    }
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, buf: HostBufMut<'_>) -> CommResult<()> {
        if let HostBufMut::U8(_) = buf {
            return Err("sums of bytes are not supported; use i64".into());
        }
        Ok(())
    }
    fn broadcast(&self, _buf: HostBufMut<'_>, root: usize) -> CommResult<()> {
        if root != 0 {
            return Err(format!("root {root} is outside a group of 1 rank"));
        }
        Ok(())
    }
    fn barrier(&self) -> CommResult<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> CommResult<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn duplicate(&self) -> CommResult<Box<dyn Communicator>> {
        Ok(Box::new(SingleProcess))
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
