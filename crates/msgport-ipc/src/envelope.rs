//! The messages main and children exchange on a child's connection (a msgport port), as
//! `Value` objects: `{"t": kind, "ch": channel, "id": n, "d": data}` and replies
//! `{"t": "reply", "id": n, "ok": value}` or `{"t": "reply", "id": n, "err": {"kind", "message"}}`.
//! Anything else a child sends is ignored (and logged): a child cannot make main fail.

use msgport::{MessagePort, PostError, Value};

use crate::InvokeError;

pub(crate) enum Envelope {
    /// Fire-and-forget (`send`), or `post_message` when ports ride along.
    Send { channel: String, data: Value },
    /// A request; main answers with `Reply { id }`.
    Invoke {
        channel: String,
        id: u64,
        data: Value,
    },
    /// The answer to an `Invoke`.
    Reply {
        id: u64,
        result: Result<Value, InvokeError>,
    },
    /// Main is shutting down on purpose (`IpcMain::shutdown`): the close that follows is not a
    /// crash.
    Bye,
}

fn field<'a>(entries: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl Envelope {
    pub(crate) fn into_value(self) -> Value {
        let s = |x: &str| Value::String(x.to_owned());
        match self {
            Envelope::Send { channel, data } => Value::Object(vec![
                ("t".into(), s("send")),
                ("ch".into(), Value::String(channel)),
                ("d".into(), data),
            ]),
            Envelope::Invoke { channel, id, data } => Value::Object(vec![
                ("t".into(), s("invoke")),
                ("ch".into(), Value::String(channel)),
                ("id".into(), Value::from(id)),
                ("d".into(), data),
            ]),
            Envelope::Bye => Value::Object(vec![("t".into(), s("bye"))]),
            Envelope::Reply { id, result } => {
                let body = match result {
                    Ok(v) => ("ok".into(), v),
                    Err(e) => (
                        "err".into(),
                        Value::Object(vec![
                            ("kind".into(), s(e.kind())),
                            ("message".into(), Value::String(e.to_string())),
                        ]),
                    ),
                };
                Value::Object(vec![
                    ("t".into(), s("reply")),
                    ("id".into(), Value::from(id)),
                    body,
                ])
            }
        }
    }

    pub(crate) fn from_value(v: Value) -> Option<Envelope> {
        let Value::Object(entries) = v else {
            return None;
        };
        let text = |k: &str| match field(&entries, k) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let id = || match field(&entries, "id") {
            Some(Value::Number(n)) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
            _ => None,
        };
        let data = || field(&entries, "d").cloned().unwrap_or(Value::Undefined);
        match text("t")?.as_str() {
            "send" => Some(Envelope::Send {
                channel: text("ch")?,
                data: data(),
            }),
            "invoke" => Some(Envelope::Invoke {
                channel: text("ch")?,
                id: id()?,
                data: data(),
            }),
            "bye" => Some(Envelope::Bye),
            "reply" => {
                let result = match (field(&entries, "ok"), field(&entries, "err")) {
                    (Some(v), None) => Ok(v.clone()),
                    (None, Some(e)) => Err(InvokeError::from_wire(
                        e.get("kind").and_then(Value::as_str).unwrap_or(""),
                        e.get("message").and_then(Value::as_str).unwrap_or(""),
                    )),
                    _ => return None,
                };
                Some(Envelope::Reply { id: id()?, result })
            }
            _ => None,
        }
    }
}

/// Posts a `send` envelope (with `ports`, for `post_message`) on a connection, either way.
pub(crate) fn post_send<T, I>(
    port: &MessagePort,
    channel: &str,
    data: T,
    ports: I,
) -> Result<(), PostError>
where
    T: serde::Serialize,
    I: IntoIterator<Item = MessagePort>,
{
    let data = msgport::to_value(&data).map_err(|e| PostError::Serialize(e.to_string()))?;
    let envelope = Envelope::Send {
        channel: channel.to_owned(),
        data,
    };
    port.post_message(envelope.into_value(), ports)
}
