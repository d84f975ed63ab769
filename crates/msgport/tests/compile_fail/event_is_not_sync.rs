// A message's data is only `Send`: an event cannot be shared between threads by reference.
fn sync<T: Sync>() {}

fn main() {
    sync::<msgport::MessageEvent>();
}
