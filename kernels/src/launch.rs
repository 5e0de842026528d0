//! Launch configurations: grid and block sizes for every family, and how a reduction is cut
//! into groups of threads and passes. These are first choices to be tuned on a GPU; any
//! configuration that [`group_is_valid`] accepts computes the same result.

/// Threads per block for every kernel (a multiple of 32, as the group loops require).
pub const BLOCK: u32 = 256;

/// Blocks per streaming multiprocessor that grid-stride loops are capped at (8 resident blocks
/// of 256 threads fill an SM; 4 such waves amortise the tail).
pub const BLOCKS_PER_SM: u32 = 32;

/// Grid and block size of one launch (one-dimensional; no dynamic shared memory is used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    /// Blocks in the grid.
    pub grid: u32,
    /// Threads per block.
    pub block: u32,
}

fn cap(sm_count: u32) -> u64 {
    sm_count.max(1) as u64 * BLOCKS_PER_SM as u64
}

/// The launch of a grid-stride loop over `n` elements (elementwise, cast, fill, copy, concat,
/// embed, gather, scatter-add, Adam): one thread per element up to a grid of
/// [`BLOCKS_PER_SM`] blocks per SM, then every thread takes several elements.
pub fn elementwise(n: i64, sm_count: u32) -> LaunchDims {
    let blocks = (n.max(1) as u64).div_ceil(BLOCK as u64);
    LaunchDims {
        grid: blocks.min(cap(sm_count)) as u32,
        block: BLOCK,
    }
}

/// The launch of a group loop over `tasks` with `group` threads per task.
pub fn for_tasks(tasks: i64, group: u32, sm_count: u32) -> LaunchDims {
    let per_block = if group > 32 { 1 } else { (BLOCK / group) as u64 };
    let blocks = (tasks.max(1) as u64).div_ceil(per_block);
    LaunchDims {
        grid: blocks.min(cap(sm_count)) as u32,
        block: if group > 32 { group } else { BLOCK },
    }
}

/// The launch of a fused attention pass over `blocks` blocks of rows (each block of
/// `threads` threads owns the rows of one matrix): one block each, up to [`BLOCKS_PER_SM`] per
/// SM, then every block takes several.
pub fn for_row_blocks(blocks: i64, threads: u32, sm_count: u32) -> LaunchDims {
    LaunchDims {
        grid: (blocks.max(1) as u64).min(cap(sm_count)) as u32,
        block: threads,
    }
}

/// True when a kernel taking `group` can be launched with `block` threads per block: `block` a
/// multiple of 32 up to 1024, and `group` a power of two up to 32 or equal to `block`.
pub fn group_is_valid(group: u32, block: u32) -> bool {
    let block_ok = block > 0 && block.is_multiple_of(32) && block <= 1024;
    let group_ok = (group.is_power_of_two() && group <= 32) || group == block;
    block_ok && group_ok
}

/// Threads per task for `n` elements per task: the next power of two up to 32.
fn warp_group(n: i64) -> u32 {
    (n.max(1) as u64).next_power_of_two().min(32) as u32
}

/// How to run a reduction of `n_red` elements into each of `n_out` outputs (see
/// [`crate::ReduceLayouts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReducePlan {
    /// Threads per task in the first pass (`group` argument).
    pub group: u32,
    /// Chunks per output: 1 means one `Single` launch; more means a `Partial` launch writing
    /// `n_out * splits` accumulators (a workspace of
    /// [`crate::ReduceSpec::acc_type`]) then a `Finish` launch.
    pub splits: i64,
    /// The `Single` or `Partial` launch.
    pub main: LaunchDims,
    /// The `Finish` launch and its `group`, when `splits > 1`.
    pub finish: Option<(LaunchDims, u32)>,
}

/// Chooses the reduction's groups and passes. `reduced_unit_stride` is
/// [`crate::ReduceLayouts::reduced_unit_stride`]: when the reduced elements are not adjacent,
/// one thread per output reads neighbouring outputs together (the reduction of leading axes);
/// otherwise a group of up to 32 threads, or a block of [`BLOCK`] for long runs, reads each
/// output's run. When the outputs are too few to fill the GPU, the runs are cut into chunks of
/// at least 4096 elements reduced by separate tasks, and a second pass combines them.
pub fn reduce_plan(n_out: i64, n_red: i64, reduced_unit_stride: bool, sm_count: u32) -> ReducePlan {
    let n_out = n_out.max(1);
    let n_red = n_red.max(0);
    let threads = sm_count.max(1) as i64 * 2048;
    let group = if !reduced_unit_stride && n_out >= 1024 {
        1
    } else if n_red >= 2048 && n_out * 32 < threads {
        BLOCK
    } else {
        warp_group(n_red)
    };
    let busy = n_out * group as i64;
    let mut splits = 1;
    if busy < threads / 2 && n_red >= 2 * 4096 {
        let want = (threads + busy - 1) / busy;
        splits = want.min(n_red / 4096).clamp(1, 1024);
    }
    let main = for_tasks(n_out * splits, group, sm_count);
    let finish = (splits > 1).then(|| {
        let g = warp_group(splits);
        (for_tasks(n_out, g, sm_count), g)
    });
    ReducePlan {
        group,
        splits,
        main,
        finish,
    }
}

/// The launch of a row kernel (softmax, log-softmax, cross-entropy) over `rows` rows of
/// `cols` elements, and its `group`: a block per row for long rows, else up to a warp.
pub fn row_plan(rows: i64, cols: i64, sm_count: u32) -> (LaunchDims, u32) {
    let group = if cols >= 1024 { BLOCK } else { warp_group(cols) };
    (for_tasks(rows, group, sm_count), group)
}

/// How batch normalisation's channel kernels ([`crate::ChannelSpec`]) run over `channels`
/// channels of `count` values each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelPlan {
    /// Chunks per channel in the `Partial` pass (its workspace holds `channels * splits *`
    /// [`crate::ChannelSpec::partial_width`] accumulators).
    pub splits: i64,
    /// The `Partial` launch: a block of [`BLOCK`] threads per chunk.
    pub partial: LaunchDims,
    /// The `Finish` launch: a thread per channel.
    pub finish: LaunchDims,
}

/// Cuts each channel into chunks of at least 2048 values, enough for about 8 blocks per SM
/// over all channels (at most 1024 chunks a channel).
pub fn channel_plan(channels: i64, count: i64, sm_count: u32) -> ChannelPlan {
    let channels = channels.max(1);
    let want = (sm_count.max(1) as u64 * 8).div_ceil(channels as u64) as i64;
    let splits = want.min(count.max(0) / 2048).clamp(1, 1024);
    ChannelPlan {
        splits,
        partial: for_tasks(channels * splits, BLOCK, sm_count),
        finish: elementwise(channels, sm_count),
    }
}

/// The launch of an arg-max/min over `n_out` outputs of `n_red` elements each, and its `group`
/// (a block per output for long axes, else up to a warp; never split).
pub fn arg_reduce_plan(n_out: i64, n_red: i64, sm_count: u32) -> (LaunchDims, u32) {
    let group = if n_red >= 2048 { BLOCK } else { warp_group(n_red) };
    (for_tasks(n_out, group, sm_count), group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMS: u32 = 132;

    #[test]
    fn elementwise_grids_are_capped() {
        assert_eq!(elementwise(0, SMS), LaunchDims { grid: 1, block: 256 });
        assert_eq!(elementwise(1000, SMS).grid, 4);
        assert_eq!(elementwise(1 << 28, SMS).grid, SMS * BLOCKS_PER_SM);
    }

    #[test]
    fn reduce_plans_are_valid_and_split_when_the_outputs_are_few() {
        for n_out in [1, 3, 100, 1 << 12, 1 << 20] {
            for n_red in [0, 1, 5, 33, 2048, 1 << 16, 1 << 24] {
                for unit in [false, true] {
                    let p = reduce_plan(n_out, n_red, unit, SMS);
                    assert!(group_is_valid(p.group, p.main.block), "{p:?}");
                    assert!(p.splits >= 1 && p.splits <= 1024);
                    if p.splits > 1 {
                        let chunk = (n_red + p.splits - 1) / p.splits;
                        assert!(chunk >= 4096, "{n_out} {n_red} {p:?}");
                        let (dims, g) = p.finish.unwrap();
                        assert!(group_is_valid(g, dims.block));
                    } else {
                        assert!(p.finish.is_none());
                    }
                }
            }
        }
        // Sum of everything: block groups, split; sum over the leading axis of [4096, 4096]:
        // a thread per output.
        let all = reduce_plan(1, 1 << 28, true, SMS);
        assert_eq!(all.group, BLOCK);
        assert!(all.splits > 100);
        let lead = reduce_plan(4096, 4096, false, SMS);
        assert_eq!((lead.group, lead.splits), (1, 1));
        let rows = reduce_plan(1 << 20, 10, true, SMS);
        assert_eq!((rows.group, rows.splits), (16, 1));
    }

    #[test]
    fn row_and_arg_plans_are_valid() {
        for cols in [1, 10, 1000, 50_000] {
            let (d, g) = row_plan(512, cols, SMS);
            assert!(group_is_valid(g, d.block));
            let (d, g) = arg_reduce_plan(512, cols, SMS);
            assert!(group_is_valid(g, d.block));
        }
        assert!(!group_is_valid(3, 256));
        assert!(!group_is_valid(64, 256));
        assert!(group_is_valid(256, 256));
    }

    #[test]
    fn channel_plans_fill_the_gpu_with_chunks_of_2048_or_more() {
        // Batch norm of [32, 64, 56, 56]: 64 channels of 100352 values, 17 chunks each.
        let p = channel_plan(64, 32 * 56 * 56, SMS);
        assert_eq!(p.splits, 17);
        assert_eq!(
            p.partial,
            LaunchDims {
                grid: 64 * 17,
                block: BLOCK
            }
        );
        assert_eq!(p.finish.grid, 1);
        // Few values, or many channels: one chunk.
        assert_eq!(channel_plan(3, 100, SMS).splits, 1);
        assert_eq!(channel_plan(2048, 1 << 20, SMS).splits, 1);
        // One channel of 2^28 values: capped at 1024 chunks.
        assert_eq!(channel_plan(1, 1 << 28, SMS).splits, 1024);
        assert_eq!(channel_plan(1, 0, SMS).splits, 1);
    }
}
