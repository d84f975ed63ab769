// The web's "an already transferred (detached) port" cannot be used again.
use msgport::MessageChannel;

fn main() {
    let (a, _b) = MessageChannel::new().into_ports();
    let (c, _d) = MessageChannel::new().into_ports();
    a.post_message((), [c]).unwrap();
    c.start();
}
