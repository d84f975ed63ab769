// The web's "the source port in its own transfer list" cannot be written.
use msgport::MessageChannel;

fn main() {
    let (a, _b) = MessageChannel::new().into_ports();
    a.post_message((), [a]).unwrap();
}
