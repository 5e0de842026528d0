//! The user-facing `jit` and its per-signature cache.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::recorder::{Recorder, activate, is_recording};
use super::tape::Tape;
use crate::device::Device;
use crate::dtype::DType;
use crate::layout::{Dims, Layout};
use crate::storage::{RawTensor, Storage};
use crate::tensor::Tensor;
use crate::tree::Tree;

/// What identifies a recorded program: per input leaf its dtype, device and shape. Layouts
/// and buffer sharing are not part of it: programs are recorded on fresh contiguous copies of
/// the inputs, and replays read every input as a contiguous view (see [`contiguous_input`]).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Signature(Vec<(DType, Device, Dims)>);

impl Signature {
    fn of(leaves: &[Tensor]) -> Signature {
        Signature(
            leaves
                .iter()
                .map(|t| (t.dtype(), t.device(), Dims::from_slice(t.shape())))
                .collect(),
        )
    }
}

/// `t`'s value as a row-major view starting at offset 0 of its buffer: the tensor's own
/// storage when it already is one (no copy, the usual case), else a copy.
fn contiguous_input(t: &Tensor) -> Storage {
    let raw = t.raw();
    if raw.layout == Layout::contiguous(&raw.layout.shape) {
        return raw.storage.clone();
    }
    fresh_copy(t)
}

/// A new buffer holding `t`'s value, row-major from offset 0.
fn fresh_copy(t: &Tensor) -> Storage {
    crate::backend::registered_backend(t.device())
        .unwrap_or_else(|e| panic!("{e}"))
        .contiguous(t.raw())
        .storage
}

/// A signature's entry: a program and the output tree to rebuild, or the reason it runs
/// eagerly.
enum Entry<B> {
    Compiled { tape: Tape, template: B },
    Eager { reason: String },
}

/// What a [`Jit`] has cached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheInfo {
    /// Signatures with a recorded program.
    pub compiled: usize,
    /// Signatures that run eagerly, each with the reason.
    pub eager: Vec<String>,
    /// Calls answered by replaying a program.
    pub replays: u64,
    /// Calls that ran the function itself (recording, eager signatures, and calls inside
    /// other transforms).
    pub eager_calls: u64,
}

/// A function with a cache of recorded programs, one per input signature (see the module
/// documentation). Build it with [`jit`] or [`Jit::new`] and call it with [`Jit::call`].
pub struct Jit<A, B, F> {
    f: F,
    cache: Mutex<HashMap<Signature, Arc<Entry<B>>>>,
    replays: AtomicU64,
    eager_calls: AtomicU64,
    _args: PhantomData<fn(&A)>,
}

impl<A: Tree, B: Tree, F: Fn(&A) -> B> Jit<A, B, F> {
    /// Wraps `f`; nothing is recorded until the first call.
    pub fn new(f: F) -> Self {
        Jit {
            f,
            cache: Mutex::new(HashMap::new()),
            replays: AtomicU64::new(0),
            eager_calls: AtomicU64::new(0),
            _args: PhantomData,
        }
    }

    /// `f(args)`: replayed when this signature was recorded, recorded when it is new.
    ///
    /// Inside another transform (an argument traced by `grad`/`vjp`/`jvp` or `backward`, or
    /// batched by `vmap`) and while an enclosing `jit` records, `f` runs as it is, so `jit`
    /// composes with every transform.
    pub fn call(&self, args: &A) -> B {
        let leaves = args.leaves();
        if is_recording() || leaves.iter().any(|t| t.is_traced() || t.is_batched()) {
            return self.run_eagerly(args);
        }
        let sig = Signature::of(&leaves);
        let entry = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&sig).cloned();
        match entry.as_deref() {
            Some(Entry::Compiled { tape, template }) => {
                self.replays.fetch_add(1, Ordering::Relaxed);
                let inputs: Vec<Storage> = leaves.iter().map(contiguous_input).collect();
                let outs = tape.replay(&inputs).into_iter().map(Tensor::from_raw).collect();
                template.rebuild(outs)
            }
            Some(Entry::Eager { .. }) => self.run_eagerly(args),
            None => self.record(args, &leaves, sig),
        }
    }

    fn run_eagerly(&self, args: &A) -> B {
        self.eager_calls.fetch_add(1, Ordering::Relaxed);
        (self.f)(args)
    }

    fn record(&self, args: &A, leaves: &[Tensor], sig: Signature) -> B {
        // The function runs on fresh copies of the inputs: a buffer that is an input then
        // cannot also be a tensor the function captured (a constant), and inputs that share a
        // buffer stay separate inputs of the program.
        let copies: Vec<Tensor> = leaves
            .iter()
            .map(|t| {
                Tensor::from_raw(RawTensor {
                    storage: fresh_copy(t),
                    layout: Layout::contiguous(t.shape()),
                })
            })
            .collect();
        let inputs: Vec<Storage> = copies.iter().map(|t| t.raw().storage.clone()).collect();
        let rec = Arc::new(Mutex::new(Recorder::new(&inputs)));
        let out = {
            let _active = activate(rec.clone());
            self.run_eagerly(&args.rebuild(copies))
        };
        let rec = Arc::try_unwrap(rec)
            .unwrap_or_else(|_| panic!("jit: a backend handed out while recording outlived the call"))
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let out_leaves = out.leaves();
        let entry = if let Some(t) = out_leaves.iter().find(|t| t.is_traced() || t.is_batched()) {
            Entry::Eager {
                reason: format!(
                    "an output of shape {:?} is traced by an enclosing transform or batched by vmap",
                    t.shape()
                ),
            }
        } else {
            let raws: Vec<_> = out_leaves.iter().map(|t| t.raw().clone()).collect();
            match rec.finish(&raws) {
                Ok(tape) => {
                    // The structure only: the recorded outputs are not kept alive by the cache.
                    let placeholder = crate::ops::create::tensor(0.0f32);
                    let template = out.rebuild(out_leaves.iter().map(|_| placeholder.clone()).collect());
                    Entry::Compiled { tape, template }
                }
                Err(reason) => Entry::Eager { reason },
            }
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sig, Arc::new(entry));
        out
    }

    /// How many signatures are compiled, which run eagerly and why, and the call counts.
    pub fn cache_info(&self) -> CacheInfo {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        CacheInfo {
            compiled: cache
                .values()
                .filter(|e| matches!(***e, Entry::Compiled { .. }))
                .count(),
            eager: cache
                .values()
                .filter_map(|e| match &**e {
                    Entry::Eager { reason } => Some(reason.clone()),
                    Entry::Compiled { .. } => None,
                })
                .collect(),
            replays: self.replays.load(Ordering::Relaxed),
            eager_calls: self.eager_calls.load(Ordering::Relaxed),
        }
    }
}

/// `f` with its kernel calls recorded once per input signature and replayed afterwards (JAX's
/// `jax.jit`, Nabla's `nb.jit`). The result is a closure; use [`Jit::new`] to also read
/// [`Jit::cache_info`].
pub fn jit<A: Tree, B: Tree>(f: impl Fn(&A) -> B) -> impl Fn(&A) -> B {
    let j = Jit::new(f);
    move |a: &A| j.call(a)
}
