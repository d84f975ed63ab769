//! The web's transfer-list errors are compile errors in Rust: each file under
//! `tests/compile_fail/` must fail to build, with the error recorded next to it.

#[test]
fn transfer_list_errors_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
