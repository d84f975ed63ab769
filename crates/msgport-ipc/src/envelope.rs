//! The messages main and children exchange on a child's connection (a msgport port), as
//! `Value` objects: `{"t": kind, "ch": channel, "id": n, "d": data}` and replies
//! `{"t": "reply", "id": n, "ok": value}` or
//! `{"t": "reply", "id": n, "err": {"kind", "message", "detail"}}`: an [`InvokeError`] as
//! structured fields (`kind` names the variant, `detail` is what it carries: the channel of
//! `no-handler`, the handler's own message; `message` is the error's text, for people and for
//! clients in other languages).
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
                    Err(e) => {
                        let mut fields = vec![
                            ("kind".into(), s(e.kind())),
                            ("message".into(), Value::String(e.to_string())),
                        ];
                        fields.extend(e.detail().map(|d| ("detail".into(), Value::String(d))));
                        ("err".into(), Value::Object(fields))
                    }
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
                    (None, Some(e)) => {
                        let text = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
                        Err(InvokeError::from_wire(
                            &text("kind").unwrap_or_default(),
                            text("detail")
                                .or_else(|| text("message"))
                                .unwrap_or_default(),
                        ))
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An error crosses as fields, not as text parsed back: a channel with a quote in it, or a
    /// handler's message that looks like another error's text, come back as they were.
    #[test]
    fn invoke_errors_cross_the_wire_as_they_were() {
        for e in [
            InvokeError::NoHandler(r#"say "hi""#.into()),
            InvokeError::NoHandler("tab\there".into()),
            InvokeError::HandlerFailed("handler panicked: not really".into()),
            InvokeError::HandlerFailed(String::new()),
            InvokeError::HandlerPanicked("index out of bounds".into()),
            InvokeError::Data("jobs[2].id: invalid type".into()),
            InvokeError::Timeout,
            InvokeError::MainGone,
        ] {
            let wire = Envelope::Reply {
                id: 7,
                result: Err(e.clone()),
            }
            .into_value();
            let bytes = msgport::codec::encode(&wire);
            let back = Envelope::from_value(msgport::codec::decode(&bytes).unwrap());
            match back {
                Some(Envelope::Reply { id: 7, result }) => assert_eq!(result, Err(e)),
                _ => panic!("not a reply"),
            }
        }
    }
}
