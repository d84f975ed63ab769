// The web's "the same port twice in a transfer list" cannot be written.
use msgport::MessageChannel;

fn main() {
    let (a, _b) = MessageChannel::new().into_ports();
    let (c, _d) = MessageChannel::new().into_ports();
    a.post_message((), [c, c]).unwrap();
}
