// A port has one owner: it cannot be cloned.
use msgport::MessageChannel;

fn main() {
    let (a, _b) = MessageChannel::new().into_ports();
    let _copy = a.clone();
}
