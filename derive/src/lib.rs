//! `#[derive(Tree)]`: makes a struct of tensors (and of other trees) a pytree, so that
//! `nabla::grad` of a function of it returns gradients in a struct of the same type.
//!
//! Fields are leaves in declaration order. A field marked `#[tree(skip)]` is not a leaf: it is
//! cloned from the template when a tree is rebuilt (it must implement `Clone`), which suits
//! configuration such as sizes or activation choices.
//!
//! The generated code names the crate the deriving crate depends on: `nabla` (the facade) when
//! its manifest lists it, else `nabla-core`, or `crate` inside nabla-core itself. A
//! `#[tree(crate = "path")]` on the struct overrides that (for a renamed dependency).

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::{Data, DeriveInput, Fields, GenericParam, Index, parse_macro_input, parse_quote};

/// True when the manifest text declares a dependency named `name` (`name = ...`,
/// `name.workspace = true`, `[dependencies.name]`).
fn declares(manifest: &str, name: &str) -> bool {
    manifest.lines().map(str::trim).any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with('=') || rest.starts_with('.'))
            || l == format!("[dependencies.{name}]")
    })
}

/// The path of the crate that defines `Tree` and `Tensor`, as seen from the deriving crate.
fn crate_path(attrs: &[syn::Attribute]) -> syn::Result<Tokens> {
    for a in attrs.iter().filter(|a| a.path().is_ident("tree")) {
        let mut path = None;
        a.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                let lit: syn::LitStr = meta.value()?.parse()?;
                path = Some(lit.parse::<syn::Path>()?);
            }
            Ok(())
        })?;
        if let Some(p) = path {
            return Ok(quote!(#p));
        }
    }
    if std::env::var("CARGO_PKG_NAME").as_deref() == Ok("nabla-core") {
        return Ok(quote!(crate));
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .ok()
        .and_then(|dir| std::fs::read_to_string(std::path::Path::new(&dir).join("Cargo.toml")).ok())
        .unwrap_or_default();
    if !declares(&manifest, "nabla") && declares(&manifest, "nabla-core") {
        return Ok(quote!(::nabla_core));
    }
    Ok(quote!(::nabla))
}

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
    let root = match crate_path(&input.attrs) {
        Ok(r) => r,
        Err(e) => return e.to_compile_error().into(),
    };
    for p in input.generics.params.iter_mut() {
        if let GenericParam::Type(t) = p {
            t.bounds.push(parse_quote!(#root::Tree));
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
                    fl.push(quote!(#root::Tree::flatten_into(&self.#id, leaves);));
                    rb.push(quote!(#id: #root::Tree::unflatten_from(&self.#id, leaves)));
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
                    fl.push(quote!(#root::Tree::flatten_into(&self.#idx, leaves);));
                    rb.push(quote!(#root::Tree::unflatten_from(&self.#idx, leaves)));
                }
            }
            (quote!(#(#fl)*), quote!(#name ( #(#rb),* )))
        }
        Fields::Unit => (quote!(), quote!(#name)),
    };
    let leaves = format_ident!("leaves");
    quote! {
        impl #impl_g #root::Tree for #name #ty_g #where_g {
            fn flatten_into(&self, #leaves: &mut ::std::vec::Vec<#root::Tensor>) {
                let _ = &#leaves;
                #flatten
            }
            fn unflatten_from(&self, #leaves: &mut dyn ::core::iter::Iterator<Item = #root::Tensor>) -> Self {
                let _ = &#leaves;
                #rebuild
            }
        }
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::declares;

    #[test]
    fn finds_dependencies_in_every_manifest_spelling() {
        assert!(declares("[dependencies]\nnabla = \"0.1\"\n", "nabla"));
        assert!(declares("nabla-core.workspace = true\n", "nabla-core"));
        assert!(declares("[dependencies.nabla]\nversion = \"0.1\"", "nabla"));
        assert!(!declares("nabla-core.workspace = true\n", "nabla"));
        assert!(!declares("name = \"nabla-nn\"\n", "nabla"));
    }
}
