//! Marks which external tools the cross-checks can use (see chatvec-testkit).

fn main() {
    chatvec_testkit::probe();
}
