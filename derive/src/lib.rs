//! `#[derive(Tree)]`: makes a struct of tensors (and of other trees) a pytree, so that
//! `nabla::grad` of a function of it returns gradients in a struct of the same type.
//!
//! Fields are leaves in declaration order. A field marked `#[tree(skip)]` is not a leaf: it is
//! cloned from the template when a tree is rebuilt (it must implement `Clone`), which suits
//! configuration such as sizes or activation choices.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{parse_macro_input, parse_quote, Data, DeriveInput, Fields, GenericParam, Index};

fn is_skipped(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("tree") && a.parse_args::<syn::Ident>().map(|i| i == "skip").unwrap_or(false))
}

/// Derives `nabla::Tree` for a struct whose fields are trees (tensors, tuples, `Vec`s, other
/// derived structs, ...), with `#[tree(skip)]` for fields that are not.
#[proc_macro_derive(Tree, attributes(tree))]
pub fn derive_tree(input: TokenStream) -> TokenStream {
    let mut input = parse_macro_input!(input as DeriveInput);
    let name = input.ident.clone();
    for p in input.generics.params.iter_mut() {
        if let GenericParam::Type(t) = p {
            t.bounds.push(parse_quote!(::nabla::Tree));
        }
    }
    let (impl_g, ty_g, where_g) = input.generics.split_for_impl();
    let Data::Struct(data) = &input.data else {
        return syn::Error::new_spanned(&input.ident, "#[derive(Tree)] supports structs only")
            .to_compile_error()
            .into();
    };
    let (flatten, rebuild) = match &data.fields {
        Fields::Named(named) => {
            let mut fl = vec![];
            let mut rb = vec![];
            for f in &named.named {
                let id = f.ident.clone().expect("named");
                if is_skipped(&f.attrs) {
                    rb.push(quote!(#id: ::core::clone::Clone::clone(&self.#id)));
                } else {
                    fl.push(quote!(::nabla::Tree::flatten_into(&self.#id, leaves);));
                    rb.push(quote!(#id: ::nabla::Tree::unflatten_from(&self.#id, leaves)));
                }
            }
            (quote!(#(#fl)*), quote!(#name { #(#rb),* }))
        }
        Fields::Unnamed(unnamed) => {
            let mut fl = vec![];
            let mut rb = vec![];
            for (i, f) in unnamed.unnamed.iter().enumerate() {
                let idx = Index::from(i);
                if is_skipped(&f.attrs) {
                    rb.push(quote!(::core::clone::Clone::clone(&self.#idx)));
                } else {
                    fl.push(quote!(::nabla::Tree::flatten_into(&self.#idx, leaves);));
                    rb.push(quote!(::nabla::Tree::unflatten_from(&self.#idx, leaves)));
                }
            }
            (quote!(#(#fl)*), quote!(#name ( #(#rb),* )))
        }
        Fields::Unit => (quote!(), quote!(#name)),
    };
    let leaves = format_ident!("leaves");
    quote! {
        impl #impl_g ::nabla::Tree for #name #ty_g #where_g {
            fn flatten_into(&self, #leaves: &mut ::std::vec::Vec<::nabla::Tensor>) {
                let _ = &#leaves;
                #flatten
            }
            fn unflatten_from(&self, #leaves: &mut dyn ::core::iter::Iterator<Item = ::nabla::Tensor>) -> Self {
                let _ = &#leaves;
                #rebuild
            }
        }
    }
    .into()
}
