//! The direct serde paths against the `Value` paths they replace, on arbitrary bytes: reading
//! CBOR straight into a type (`codec::from_slice`, over `codec::scan` and `value::cbor_de`)
//! must give what `from_value(decode(bytes))` gives, or fail where it fails; writing a type
//! straight to CBOR (`codec::to_vec`) must give `encode(to_value(x))`. Never a panic.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use msgport::codec::{decode, encode, from_slice, to_vec};
use msgport::{from_value, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
enum Shape {
    Empty,
    Circle(f64),
    Pair(u8, String),
    Rect { w: u32, h: Option<u32> },
}

#[derive(Serialize, Deserialize, Debug)]
struct Record {
    id: u64,
    name: String,
    tags: Vec<String>,
    shape: Option<Shape>,
    extra: BTreeMap<String, i64>,
    big: i128,
    pair: (bool, f32),
}

fn agree<T: DeserializeOwned + Serialize>(data: &[u8]) {
    let direct = from_slice::<T>(data);
    let via_value = decode(data)
        .ok()
        .and_then(|v| from_value::<T>(v).ok());
    match (direct, via_value) {
        (Ok(a), Some(b)) => {
            let (a, b) = (to_vec(&a).unwrap(), to_vec(&b).unwrap());
            assert_eq!(a, b, "the two readings differ");
        }
        (Err(_), None) => {}
        (Ok(_), None) => panic!("read directly, refused by the Value path"),
        (Err(e), Some(_)) => panic!("refused directly ({e}), read by the Value path"),
    }
}

fuzz_target!(|data: &[u8]| {
    agree::<Value>(data);
    agree::<Record>(data);
    agree::<Vec<Shape>>(data);
    agree::<BTreeMap<String, Value>>(data);
    if let Ok(v) = decode(data) {
        assert_eq!(to_vec(&v).unwrap(), encode(&v));
    }
});
