//! Pytrees: nested containers of tensors (tuples, `Vec`, arrays, `Option`, string-keyed maps,
//! and users' parameter structs through `#[derive(Tree)]`). Transforms flatten a tree into its
//! tensor leaves, work on the leaves, and rebuild trees of the same structure.

use std::collections::BTreeMap;

use crate::tensor::Tensor;

/// A container of tensors that transforms can flatten and rebuild.
///
/// `unflatten` rebuilds a value of the same structure as `self` (the template: lengths, keys,
/// `Some`/`None`) from leaves taken in the order `flatten` gives them.
pub trait Tree: Sized {
    /// Appends the tensor leaves, depth first, in a fixed order.
    fn flatten_into(&self, leaves: &mut Vec<Tensor>);
    /// A value shaped like `self` with its leaves taken from `leaves`.
    fn unflatten_from(&self, leaves: &mut dyn Iterator<Item = Tensor>) -> Self;

    /// The tensor leaves as a vector.
    fn leaves(&self) -> Vec<Tensor> {
        let mut v = Vec::new();
        self.flatten_into(&mut v);
        v
    }

    /// A value shaped like `self` built from `leaves`; panics when their count is wrong.
    fn rebuild(&self, leaves: Vec<Tensor>) -> Self {
        let expected = self.leaves().len();
        if leaves.len() != expected {
            panic!(
                "tree: {} leaves given to rebuild a tree of {expected} leaves",
                leaves.len()
            );
        }
        self.unflatten_from(&mut leaves.into_iter())
    }

    /// The same structure with `f` applied to every leaf.
    fn map_leaves(&self, f: impl FnMut(&Tensor) -> Tensor) -> Self {
        self.rebuild(self.leaves().iter().map(f).collect())
    }

    /// Leaf counts of the positional arguments this value stands for: one count per element for
    /// a tuple (a function of several arguments takes them as a tuple), else one count for the
    /// whole value. `vmap_with` uses it to accept `in_axes` per argument, as JAX does.
    fn argument_leaf_counts(&self) -> Vec<usize> {
        vec![self.leaves().len()]
    }
}

impl Tree for Tensor {
    fn flatten_into(&self, leaves: &mut Vec<Tensor>) {
        leaves.push(self.clone());
    }
    fn unflatten_from(&self, leaves: &mut dyn Iterator<Item = Tensor>) -> Self {
        leaves.next().expect("enough leaves")
    }
}

impl Tree for () {
    fn flatten_into(&self, _leaves: &mut Vec<Tensor>) {}
    fn unflatten_from(&self, _leaves: &mut dyn Iterator<Item = Tensor>) -> Self {}
}

macro_rules! tuple_tree {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: Tree),+> Tree for ($($name,)+) {
            fn flatten_into(&self, leaves: &mut Vec<Tensor>) {
                $(self.$idx.flatten_into(leaves);)+
            }
            fn unflatten_from(&self, leaves: &mut dyn Iterator<Item = Tensor>) -> Self {
                ($(self.$idx.unflatten_from(leaves),)+)
            }
            fn argument_leaf_counts(&self) -> Vec<usize> {
                vec![$(self.$idx.leaves().len()),+]
            }
        }
    };
}
tuple_tree!(A 0);
tuple_tree!(A 0, B 1);
tuple_tree!(A 0, B 1, C 2);
tuple_tree!(A 0, B 1, C 2, D 3);
tuple_tree!(A 0, B 1, C 2, D 3, E 4);
tuple_tree!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_tree!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_tree!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

impl<T: Tree> Tree for Vec<T> {
    fn flatten_into(&self, leaves: &mut Vec<Tensor>) {
        for t in self {
            t.flatten_into(leaves);
        }
    }
    fn unflatten_from(&self, leaves: &mut dyn Iterator<Item = Tensor>) -> Self {
        self.iter().map(|t| t.unflatten_from(leaves)).collect()
    }
}

impl<T: Tree, const N: usize> Tree for [T; N] {
    fn flatten_into(&self, leaves: &mut Vec<Tensor>) {
        for t in self {
            t.flatten_into(leaves);
        }
    }
    fn unflatten_from(&self, leaves: &mut dyn Iterator<Item = Tensor>) -> Self {
        std::array::from_fn(|i| self[i].unflatten_from(leaves))
    }
}

impl<T: Tree> Tree for Option<T> {
    fn flatten_into(&self, leaves: &mut Vec<Tensor>) {
        if let Some(t) = self {
            t.flatten_into(leaves);
        }
    }
    fn unflatten_from(&self, leaves: &mut dyn Iterator<Item = Tensor>) -> Self {
        self.as_ref().map(|t| t.unflatten_from(leaves))
    }
}

impl<T: Tree> Tree for Box<T> {
    fn flatten_into(&self, leaves: &mut Vec<Tensor>) {
        (**self).flatten_into(leaves);
    }
    fn unflatten_from(&self, leaves: &mut dyn Iterator<Item = Tensor>) -> Self {
        Box::new((**self).unflatten_from(leaves))
    }
}

impl<T: Tree> Tree for BTreeMap<String, T> {
    fn flatten_into(&self, leaves: &mut Vec<Tensor>) {
        for t in self.values() {
            t.flatten_into(leaves);
        }
    }
    fn unflatten_from(&self, leaves: &mut dyn Iterator<Item = Tensor>) -> Self {
        self.iter()
            .map(|(k, t)| (k.clone(), t.unflatten_from(leaves)))
            .collect()
    }
}
