//! `uniffi-bindgen`: generates the Kotlin, Swift and Python bindings of `cohort-mobile` from its
//! compiled library (`generate --library target/debug/libcohort_mobile.so`). Run through
//! `mobile/bindings/generate.sh`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
