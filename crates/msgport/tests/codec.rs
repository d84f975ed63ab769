//! The data model's round trips: CBOR (property-based), serde, the `value!` macro.

use std::collections::{BTreeMap, HashMap};

use msgport::codec::{decode, encode, CodecError};
use msgport::{from_value, to_value, value, BigInt, Binary, BinaryKind, ErrorValue, Value};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn arb_binary() -> impl Strategy<Value = Binary> {
    (
        0..BinaryKind::ALL.len(),
        proptest::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(k, mut bytes)| {
            let kind = BinaryKind::ALL[k];
            bytes.truncate(bytes.len() / kind.element_size() * kind.element_size());
            Binary { kind, bytes }
        })
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Undefined),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |n| !n.is_nan())
            .prop_map(Value::Number),
        any::<i32>().prop_map(|n| Value::Number(f64::from(n))),
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(neg, m)| Value::BigInt(BigInt::from_sign_magnitude(neg, &m))),
        ".{0,12}".prop_map(Value::String),
        arb_binary().prop_map(Value::Binary),
        (-8_640_000_000_000_000i64..8_640_000_000_000_000).prop_map(|ms| Value::Date(ms as f64)),
        (".{0,8}", "[dgimsuy]{0,3}").prop_map(|(source, flags)| Value::RegExp { source, flags }),
        (".{0,8}", ".{0,8}", proptest::option::of(".{0,8}")).prop_map(|(name, message, stack)| {
            Value::Error(ErrorValue {
                name,
                message,
                stack,
            })
        }),
        any::<u32>().prop_map(Value::Port),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((".{0,6}", inner.clone()), 0..6).prop_map(Value::Object),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Map),
            proptest::collection::vec(inner, 0..6).prop_map(Value::Set),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn cbor_round_trips(v in arb_value()) {
        prop_assert_eq!(decode(&encode(&v)).unwrap(), v);
    }

    #[test]
    fn serde_round_trips_every_kind(v in arb_value()) {
        prop_assert_eq!(to_value(&v).unwrap(), v.clone());
        prop_assert_eq!(from_value::<Value>(v.clone()).unwrap(), v);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn truncated_encodings_are_errors(v in arb_value()) {
        let bytes = encode(&v);
        for cut in 0..bytes.len() {
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Shape {
    Unit,
    Circle(f64),
    Rect { w: u16, h: u16 },
    Pair(i8, String),
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Everything {
    id: u64,
    big: u64,
    negative: i128,
    ratio: f32,
    name: String,
    letter: char,
    maybe: Option<bool>,
    nothing: Option<u8>,
    list: Vec<u16>,
    shapes: Vec<Shape>,
    by_name: BTreeMap<String, i32>,
    by_id: HashMap<u32, String>,
    #[serde(with = "serde_bytes_like")]
    blob: Vec<u8>,
    tuple: (u8, String),
    unit: (),
}

/// `Vec<u8>` as serde bytes, without a dependency.
mod serde_bytes_like {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_byte_buf(V)
    }
}

fn everything() -> Everything {
    Everything {
        id: 7,
        big: u64::MAX,
        negative: i128::MIN,
        ratio: 0.5,
        name: "job".into(),
        letter: 'λ',
        maybe: Some(true),
        nothing: None,
        list: vec![1, 2, 3],
        shapes: vec![
            Shape::Unit,
            Shape::Circle(1.5),
            Shape::Rect { w: 2, h: 3 },
            Shape::Pair(-1, "p".into()),
        ],
        by_name: [("a".to_string(), 1), ("b".to_string(), -2)]
            .into_iter()
            .collect(),
        by_id: [(1, "one".to_string()), (2, "two".to_string())]
            .into_iter()
            .collect(),
        blob: vec![0, 255, 7],
        tuple: (9, "t".into()),
        unit: (),
    }
}

#[test]
fn user_types_round_trip_through_value_and_cbor() {
    let v = to_value(&everything()).unwrap();
    assert_eq!(v["id"], Value::Number(7.0));
    assert_eq!(v["big"], Value::BigInt(BigInt::from(u64::MAX)));
    assert_eq!(v["negative"], Value::BigInt(BigInt::from(i128::MIN)));
    assert_eq!(v["shapes"][0], value!("Unit"));
    assert_eq!(v["shapes"][2], value!({ "Rect": { "w": 2, "h": 3 } }));
    assert!(
        matches!(v["by_id"], Value::Map(_)),
        "integer keys make a Map"
    );
    assert!(
        matches!(v["by_name"], Value::Object(_)),
        "string keys make an Object"
    );
    assert_eq!(v["blob"], Value::from(&[0u8, 255, 7][..]));
    assert_eq!(from_value::<Everything>(v.clone()).unwrap(), everything());
    let wire = decode(&encode(&v)).unwrap();
    assert_eq!(from_value::<Everything>(wire).unwrap(), everything());
}

#[test]
fn mismatches_are_errors_not_panics() {
    assert!(from_value::<u8>(Value::Number(300.0)).is_err());
    assert!(from_value::<u32>(Value::Number(1.5)).is_err());
    assert!(from_value::<String>(Value::Null).is_err());
    assert!(from_value::<Shape>(value!({ "Nope": 1 })).is_err());
    assert!(from_value::<Everything>(value!([1, 2])).is_err());
    assert_eq!(
        from_value::<u64>(Value::BigInt(BigInt::from(u64::MAX))).unwrap(),
        u64::MAX
    );
    assert!(from_value::<i64>(Value::BigInt(BigInt::from(u64::MAX))).is_err());
    assert_eq!(
        from_value::<Vec<u8>>(Value::Set(vec![value!(1)])).unwrap(),
        vec![1]
    );
}

#[test]
fn value_macro_builds_every_shape() {
    let key = "dyn";
    let v = value!({
        "n": 1,
        "neg": -2.5,
        "s": "str",
        "arr": [1, [2, 3], { "k": null }, undefined],
        "sum": 1 + 2,
        (key): true,
        "empty": {},
        "none": [],
    });
    assert_eq!(v["n"], Value::Number(1.0));
    assert_eq!(v["neg"], Value::Number(-2.5));
    assert_eq!(v["arr"][1][1], Value::Number(3.0));
    assert_eq!(v["arr"][2]["k"], Value::Null);
    assert_eq!(v["arr"][3], Value::Undefined);
    assert_eq!(v["sum"], Value::Number(3.0));
    assert_eq!(v["dyn"], Value::Bool(true));
    assert_eq!(v["empty"], Value::Object(vec![]));
    assert_eq!(v["none"], Value::Array(vec![]));
    assert_eq!(v["missing"], Value::Undefined);
}

#[test]
fn special_numbers_survive_the_wire() {
    for n in [
        f64::INFINITY,
        f64::NEG_INFINITY,
        -0.0,
        1e300,
        5e-324,
        9_007_199_254_740_993.0,
    ] {
        let back = decode(&encode(&Value::Number(n))).unwrap();
        assert_eq!(back.as_f64().unwrap().to_bits(), n.to_bits());
    }
    assert!(decode(&encode(&Value::Number(f64::NAN)))
        .unwrap()
        .as_f64()
        .unwrap()
        .is_nan());
    assert!(
        matches!(decode(&encode(&Value::Date(f64::NAN))).unwrap(), Value::Date(t) if t.is_nan())
    );
}

#[test]
fn wire_vectors_are_stable() {
    // Vectors documented in docs/wire-format.md; another implementation must produce these.
    let cases: Vec<(Value, &str)> = vec![
        (value!({ "answer": 42 }), "a166616e73776572182a"),
        (Value::Undefined, "f7"),
        (Value::Number(1.5), "fb3ff8000000000000"),
        (
            Value::BigInt(BigInt::from(-(1i128 << 64))),
            "c348ffffffffffffffff",
        ),
        (Value::Date(1_000.0), "c101"),
        (Value::Set(vec![value!(1)]), "d901028101"),
        (Value::Map(vec![(value!(1), value!("a"))]), "d90103a1016161"),
        (Value::Port(0), "da6d70000100"),
        (
            Value::Binary(Binary {
                kind: BinaryKind::Uint16,
                bytes: vec![1, 0],
            }),
            "d845420100",
        ),
    ];
    for (v, hex) in cases {
        let bytes = encode(&v);
        let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, hex, "{v:?}");
        assert_eq!(decode(&bytes).unwrap(), v);
    }
}

#[test]
fn unknown_tags_and_bad_shapes_are_typed_errors() {
    assert_eq!(decode(&[0xc6, 0x01]), Err(CodecError::UnknownTag(6)));
    // A RegExp that is not [source, flags].
    assert!(matches!(
        decode(&[0xd9, 0x52, 0x4a, 0x01]),
        Err(CodecError::Invalid(_))
    ));
    // A port slot that is not an unsigned index.
    assert!(matches!(
        decode(&[0xda, 0x6d, 0x70, 0x00, 0x01, 0x20]),
        Err(CodecError::Invalid(_))
    ));
}

#[test]
fn value_accessors_read_what_users_reach_for() {
    let v = value!({ "n": 42, "neg": -3, "half": 1.5, "yes": true, "s": "x" });
    assert_eq!(v.get("n").and_then(Value::as_u64), Some(42));
    assert_eq!(v.get("neg").and_then(Value::as_u64), None);
    assert_eq!(v.get("neg").and_then(Value::as_i64), Some(-3));
    assert_eq!(v.get("half").and_then(Value::as_i64), None);
    assert_eq!(v.get("yes").and_then(Value::as_bool), Some(true));
    assert_eq!(v.get("s").and_then(Value::as_bool), None);
}

#[test]
fn values_display_as_javascript_shows_them() {
    let v = Value::Array(vec![
        Value::Undefined,
        Value::Number(f64::NAN),
        Value::Number(f64::NEG_INFINITY),
        Value::Number(42.0),
        Value::BigInt(BigInt::from(-5i64)),
        Value::Map(vec![(Value::Number(1.0), Value::from("a"))]),
        Value::Set(vec![Value::Bool(true)]),
        Value::RegExp {
            source: "ab+c".into(),
            flags: "gi".into(),
        },
        Value::Object(Vec::new()),
        Value::Port(0),
    ]);
    assert_eq!(
        v.to_string(),
        r#"[undefined, NaN, -Infinity, 42, -5n, Map { 1 => "a" }, Set { true }, /ab+c/gi, {}, port #0]"#
    );
    assert_eq!(format!("{:?}", BigInt::from(-5i64)), "-5n");
}

#[test]
fn a_decoding_error_names_the_path_to_the_value_that_did_not_fit() {
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Owner {
        id: u32,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Job {
        owner: Owner,
        tags: HashMap<String, u8>,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Batch {
        jobs: Vec<Job>,
    }
    let good = value!({ "owner": { "id": 1 }, "tags": { "a": 1 } });
    let bad_id = value!({ "owner": { "id": "x" }, "tags": {} });
    let err =
        from_value::<Batch>(value!({ "jobs": [good.clone(), good.clone(), bad_id] })).unwrap_err();
    assert_eq!(err.path(), Some("jobs[2].owner.id"), "{err}");
    assert!(err.message().contains("expected u32"), "{err}");
    assert!(err.to_string().starts_with("jobs[2].owner.id: "), "{err}");

    // A map's keys become the caller's `String`s: the entry is named by position.
    let bad_tag = value!({ "owner": { "id": 1 }, "tags": { "a": 1, "b": 300 } });
    let err = from_value::<Batch>(value!({ "jobs": [bad_tag] })).unwrap_err();
    assert_eq!(err.path(), Some("jobs[0].tags[entry 1]"), "{err}");

    // Keys that are not identifiers are quoted; a top-level mismatch has no path.
    let err = from_value::<HashMap<String, Owner>>(value!({ "a b": { "id": -1 } })).unwrap_err();
    assert_eq!(err.path(), Some("[entry 0].id"), "{err}");
    let err = from_value::<u32>(value!("x")).unwrap_err();
    assert_eq!(err.path(), None);

    // Through a port: the receiver's `DecodeError` carries the same path.
    let (a, b) = msgport::MessageChannel::new().into_ports();
    a.post_message(
        value!({ "jobs": [{ "owner": { "id": true }, "tags": {} }] }),
        [],
    )
    .unwrap();
    let err = b.blocking_recv().unwrap().data::<Batch>().unwrap_err();
    assert!(err.to_string().contains("jobs[0].owner.id: "), "{err}");

    // Success is unchanged: keys of every kind still read.
    let ok: HashMap<String, Owner> = from_value(value!({ "a b": { "id": 1 } })).unwrap();
    assert_eq!(ok["a b"].id, 1);
}

mod direct {
    //! `codec::to_vec` (serde straight to CBOR) against the `Value` path it replaces on the
    //! sender: byte for byte, error for error.

    use super::*;
    use msgport::codec;

    #[derive(Serialize, Debug, Clone)]
    struct Unit;

    #[derive(Serialize, Debug, Clone)]
    struct Newtype(i64);

    #[derive(Serialize, Debug, Clone)]
    enum Shape {
        Empty,
        Circle(f64),
        Pair(u8, String),
        Rect { w: u32, h: Option<u32> },
    }

    #[derive(Serialize, Debug, Clone)]
    struct Everything {
        a: u8,
        b: i8,
        c: u16,
        d: i16,
        e: u32,
        f: i32,
        g: u64,
        h: i64,
        i: u128,
        j: i128,
        k: f32,
        l: f64,
        m: bool,
        n: char,
        o: String,
        p: Option<Option<u8>>,
        q: Vec<u8>,
        #[serde(with = "serde_bytes_like")]
        r: Vec<u8>,
        s: BTreeMap<String, i64>,
        t: BTreeMap<u32, String>,
        u: BTreeMap<(u8, u8), bool>,
        v: (),
        w: Unit,
        x: Newtype,
        y: (u8, String),
        z: Vec<Shape>,
        value: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        maybe: Option<u8>,
        #[serde(flatten)]
        extra: BTreeMap<String, u8>,
    }

    fn arb_shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Empty),
            any::<f64>().prop_map(Shape::Circle),
            (any::<u8>(), ".{0,4}").prop_map(|(a, b)| Shape::Pair(a, b)),
            (any::<u32>(), any::<Option<u32>>()).prop_map(|(w, h)| Shape::Rect { w, h }),
        ]
    }

    prop_compose! {
        fn arb_everything()(
            ints in (any::<u8>(), any::<i8>(), any::<u16>(), any::<i16>(), any::<u32>(), any::<i32>()),
            wide in (any::<u64>(), any::<i64>(), any::<u128>(), any::<i128>()),
            floats in (any::<f32>(), any::<f64>(), prop_oneof![Just(f64::NAN), Just(-0.0), Just(9_007_199_254_740_993.0), Just(1e300), Just(-3.0)]),
            m in any::<bool>(),
            n in any::<char>(),
            o in ".{0,40}",
            p in any::<Option<Option<u8>>>(),
            q in proptest::collection::vec(any::<u8>(), 0..30),
            r in proptest::collection::vec(any::<u8>(), 0..300),
            s in proptest::collection::btree_map(".{0,6}", any::<i64>(), 0..4),
            t in proptest::collection::btree_map(any::<u32>(), ".{0,3}", 0..4),
            u in proptest::collection::btree_map(any::<(u8, u8)>(), any::<bool>(), 0..3),
            x in any::<i64>(),
            y in (any::<u8>(), ".{0,3}"),
            z in proptest::collection::vec(arb_shape(), 0..4),
            value in arb_value(),
            maybe in any::<Option<u8>>(),
            extra in proptest::collection::btree_map("[a-c]{1,2}", any::<u8>(), 0..3),
        ) -> Everything {
            let (a, b, c, d, e, f) = ints;
            let (g, h, i, j) = wide;
            let (k, l, special) = floats;
            let l = if l.is_finite() && (l as i64) % 3 == 0 { special } else { l };
            Everything {
                a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u,
                v: (), w: Unit, x: Newtype(x), y, z, value, maybe, extra,
            }
        }
    }

    fn same<T: Serialize + ?Sized>(x: &T) {
        let direct = codec::to_vec(x);
        let via_value = to_value(x).map(|v| encode(&v));
        assert_eq!(direct, via_value);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn direct_cbor_is_the_value_path(x in arb_everything()) {
            same(&x);
        }

        #[test]
        fn direct_cbor_of_a_value_is_its_encoding(v in arb_value()) {
            same(&v);
            prop_assert_eq!(codec::to_vec(&v).unwrap(), encode(&v));
        }

        #[test]
        fn integers_at_every_edge(n in prop_oneof![
            Just(i128::MIN), Just(i128::MAX), Just(1i128 << 53), Just((1i128 << 53) + 1),
            Just(-(1i128 << 53)), Just(-(1i128 << 53) - 1), Just(u64::MAX as i128), Just(i64::MIN as i128),
            any::<i64>().prop_map(i128::from),
        ]) {
            same(&n);
            if let Ok(n64) = i64::try_from(n) { same(&n64); }
            if let Ok(u) = u64::try_from(n) { same(&u); }
            if let Ok(u) = u128::try_from(n) { same(&u); }
        }
    }

    /// Serializers whose lengths lie or are unknown, and one that fails: the head is fixed up,
    /// the error is the same, and nothing half-written is left.
    #[test]
    fn lengths_that_lie_or_are_unknown_and_errors() {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Seq(Option<usize>, usize);
        impl Serialize for Seq {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(self.0)?;
                for i in 0..self.1 {
                    seq.serialize_element(&i)?;
                }
                seq.end()
            }
        }
        struct Map(Option<usize>, usize, bool);
        impl Serialize for Map {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(self.0)?;
                for i in 0..self.1 {
                    if self.2 && i == 1 {
                        map.serialize_entry(&i, &i)?;
                    } else {
                        map.serialize_entry(&format!("k{i}"), &i)?;
                    }
                }
                map.end()
            }
        }
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("refused"))
            }
        }
        for (declared, actual) in [
            (None, 0),
            (None, 30),
            (Some(3), 2),
            (Some(1), 300),
            (Some(0), 0),
        ] {
            same(&Seq(declared, actual));
            same(&vec![Seq(declared, actual), Seq(None, 1)]);
            for mixed in [false, true] {
                same(&Map(declared, actual, mixed));
                same(&(Map(declared, actual, mixed), 5u8));
            }
        }
        same(&Fails);
        same(&(1u8, Fails));
        // Large byte strings travel apart from the rest; heads put in front of them later
        // (a map that turns out to be a `Map`, a sequence of unknown length) move them along.
        #[derive(Serialize)]
        struct Big(#[serde(with = "serde_bytes_like")] Vec<u8>);
        let big = || Big(vec![7; 70_000]);
        let mut keyed = BTreeMap::new();
        keyed.insert(1u32, big());
        keyed.insert(2u32, Big(vec![1, 2]));
        same(&keyed);
        same(&(Seq(None, 3), big(), Seq(Some(5), 1), big()));
        struct Unknown;
        impl Serialize for Unknown {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut seq = s.serialize_seq(None)?;
                seq.serialize_element(&Big(vec![3; 100_000]))?;
                seq.serialize_element(&Seq(None, 300))?;
                seq.serialize_element(&Big(vec![4; 65_536]))?;
                seq.end()
            }
        }
        same(&Unknown);
        same(&vec![Unknown, Unknown]);
        assert!(codec::to_vec(&vec![Value::Null; 2]).is_ok());
    }
}

mod direct_decoding {
    //! `codec::from_slice` (CBOR straight to serde) against the `Value` path it replaces on the
    //! receiver: the same value, or an error where that path fails.

    use super::*;
    use msgport::codec;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    enum Shape {
        Empty,
        Circle(f64),
        Pair(u8, String),
        Rect { w: u32, h: Option<u32> },
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Inner {
        id: u64,
        name: String,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Rich {
        a: u8,
        b: i32,
        c: i64,
        d: u128,
        e: f64,
        f: bool,
        g: char,
        h: String,
        i: Option<Option<u8>>,
        j: Vec<u8>,
        #[serde(with = "serde_bytes_like")]
        k: Vec<u8>,
        l: BTreeMap<String, i64>,
        m: BTreeMap<u32, String>,
        n: (u8, String),
        o: Vec<Shape>,
        p: Inner,
        q: Vec<Inner>,
        r: (),
        #[serde(default)]
        s: Option<Box<Inner>>,
    }

    fn arb_shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Empty),
            (-1e6f64..1e6).prop_map(Shape::Circle),
            (any::<u8>(), ".{0,4}").prop_map(|(a, b)| Shape::Pair(a, b)),
            (any::<u32>(), any::<Option<u32>>()).prop_map(|(w, h)| Shape::Rect { w, h }),
        ]
    }

    prop_compose! {
        fn arb_inner()(id in any::<u64>(), name in ".{0,8}") -> Inner { Inner { id, name } }
    }

    prop_compose! {
        fn arb_rich()(
            ints in (any::<u8>(), any::<i32>(), any::<i64>(), any::<u128>()),
            e in prop_oneof![any::<f64>().prop_filter("not NaN", |x| !x.is_nan()), Just(-0.0), Just(3.0)],
            f in any::<bool>(),
            g in any::<char>(),
            h in ".{0,30}",
            // `Some(None)` reads back as `None` (documented serde fact): not generated here.
            i in proptest::option::of(any::<u8>()).prop_map(|o| o.map(Some)),
            j in proptest::collection::vec(any::<u8>(), 0..20),
            k in proptest::collection::vec(any::<u8>(), 0..40),
            l in proptest::collection::btree_map(".{0,5}", any::<i64>(), 0..4),
            m in proptest::collection::btree_map(any::<u32>(), ".{0,3}", 0..3),
            n in (any::<u8>(), ".{0,3}"),
            o in proptest::collection::vec(arb_shape(), 0..4),
            p in arb_inner(),
            q in proptest::collection::vec(arb_inner(), 0..3),
            s in proptest::option::of(arb_inner()),
        ) -> Rich {
            let (a, b, c, d) = ints;
            Rich { a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r: (), s: s.map(Box::new) }
        }
    }

    /// Both paths agree on `bytes` read as `T`: equal values (compared by their encoding, so
    /// that NaN equals itself), or both errors.
    fn agree<T: serde::de::DeserializeOwned + Serialize + std::fmt::Debug>(bytes: &[u8]) {
        let direct = codec::from_slice::<T>(bytes);
        let via_value = decode(bytes)
            .map_err(|e| e.to_string())
            .and_then(|v| from_value::<T>(v).map_err(|e| e.to_string()));
        match (&direct, &via_value) {
            (Ok(a), Ok(b)) => assert_eq!(
                codec::to_vec(a).unwrap(),
                codec::to_vec(b).unwrap(),
                "{a:?} vs {b:?}"
            ),
            (Err(_), Err(_)) => {}
            _ => panic!("the paths disagree on {bytes:02x?}: {direct:?} vs {via_value:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn direct_decoding_is_the_value_path(x in arb_rich()) {
            let bytes = codec::to_vec(&x).unwrap();
            let back: Rich = codec::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &x);
            agree::<Rich>(&bytes);
            agree::<Value>(&bytes);
            agree::<(u8, i32)>(&bytes);
            agree::<BTreeMap<String, Value>>(&bytes);
        }

        #[test]
        fn any_value_reads_alike_as_every_type(v in arb_value()) {
            let bytes = encode(&v);
            agree::<Value>(&bytes);
            agree::<Rich>(&bytes);
            agree::<Shape>(&bytes);
            agree::<Vec<Value>>(&bytes);
            agree::<Option<(String, u8)>>(&bytes);
            agree::<BTreeMap<String, Value>>(&bytes);
            agree::<BTreeMap<String, Option<i64>>>(&bytes);
            agree::<u64>(&bytes);
            agree::<String>(&bytes);
        }

        #[test]
        fn damaged_bytes_read_alike(x in arb_rich(), at in any::<usize>(), byte in any::<u8>(), cut in any::<bool>()) {
            let mut bytes = codec::to_vec(&x).unwrap();
            let at = at % bytes.len();
            if cut {
                bytes.truncate(at);
            } else {
                bytes[at] = byte;
            }
            agree::<Rich>(&bytes);
            agree::<Value>(&bytes);
        }
    }

    #[test]
    fn edges_read_alike() {
        for v in [
            value!([[[[[]]]]]),
            Value::Number(9_007_199_254_740_992.0),
            Value::BigInt(BigInt::from(9_007_199_254_740_993i64)),
            Value::BigInt(BigInt::from(-9_007_199_254_740_993i64)),
            value!({ "Rect": { "w": 1, "h": null } }),
            value!({ "Rect": { "w": 1 }, "Empty": null }),
            value!({ "Empty": null }),
            value!({ "Empty": 1 }),
            value!("Empty"),
            value!({ "Circle": 1.5 }),
            value!({ "Pair": [1, "x", "extra"] }),
            value!([1, 2, 3]),
        ] {
            let bytes = encode(&v);
            agree::<Shape>(&bytes);
            agree::<(u8, u8)>(&bytes);
            agree::<Value>(&bytes);
            agree::<u64>(&bytes);
            agree::<i64>(&bytes);
            agree::<Vec<Vec<Vec<Value>>>>(&bytes);
        }
        // Nesting right at and past the depth limit.
        for depth in [255usize, 256, 257, 300] {
            let mut bytes = vec![0x81; depth];
            bytes.push(0x01);
            agree::<Value>(&bytes);
        }
        // Plain CBOR integers just past ±2⁵³ are bigints, not rounded numbers.
        let bytes = [0x1b, 0, 0x20, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            decode(&bytes).unwrap(),
            Value::BigInt(BigInt::from(9_007_199_254_740_993i64))
        );
        agree::<u64>(&bytes);
        agree::<Value>(&bytes);
    }

    /// `from_slice` reads in one pass: a map that shows a key other than a definite text
    /// string only after other entries were read (which msgport's encoder never writes, a
    /// foreign one may) is read again through a `Value`, with the same result.
    #[test]
    fn a_key_that_is_not_text_after_text_keys_reads_alike() {
        for bytes in [
            &[0xa2, 0x61, b'a', 0x01, 0x01, 0x02][..],
            &[0xa2, 0x61, b'w', 0x01, 0x01, 0x02],
            &[0xa2, 0x61, b'w', 0x61, b'x', 0x01, 0x02],
            &[0xa2, 0x61, b'w', 0x01, 0x7f, 0x61, b'h', 0xff, 0xf6],
            &[0xa1, 0x01, 0xf6],
            &[0xa1, 0x7f, 0xff, 0xf6],
            &[0x81, 0xa2, 0x61, b'a', 0x01, 0xf5, 0x02],
        ] {
            agree::<Value>(bytes);
            agree::<Shape>(bytes);
            agree::<Vec<Shape>>(bytes);
            agree::<BTreeMap<String, i64>>(bytes);
            agree::<BTreeMap<u32, i64>>(bytes);
            agree::<Vec<BTreeMap<String, Value>>>(bytes);
        }
    }

    /// A length no input of its size could hold is refused before a visitor is told it: a
    /// type that reserves what `size_hint` says gets an error, not an allocation of exabytes.
    #[test]
    fn a_container_longer_than_its_input_is_refused_before_its_visitor_sees_it() {
        struct Reserving;
        impl<'de> serde::de::Visitor<'de> for Reserving {
            type Value = Reserving;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("anything")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Reserving, A::Error> {
                let n = seq.size_hint().expect("a definite array");
                assert!(n <= 64, "told of {n} elements in a 64-byte input");
                Ok(Reserving)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Reserving, A::Error> {
                let n = map.size_hint().expect("a definite map");
                assert!(n <= 32, "told of {n} entries in a 64-byte input");
                Ok(Reserving)
            }
        }
        impl<'de> Deserialize<'de> for Reserving {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(Reserving)
            }
        }
        for head in [
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x9a, 0x00, 0x01, 0x00, 0x00],
            &[0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0],
            &[0xb8, 0x40],
        ] {
            let mut bytes = head.to_vec();
            bytes.resize(64, 0x00);
            assert!(
                codec::from_slice::<Reserving>(&bytes).is_err(),
                "{head:02x?}"
            );
        }
    }
}

/// The vectors shared with the TypeScript client (testdata/wire-vectors.json): each decodes to
/// its value, and those marked "both" encode to exactly their bytes.
#[test]
fn shared_vectors_of_testdata() {
    use serde_json::Value as Json;
    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
    fn kind(name: &str) -> BinaryKind {
        match name {
            "ArrayBuffer" => BinaryKind::ArrayBuffer,
            "DataView" => BinaryKind::DataView,
            "Int8Array" => BinaryKind::Int8,
            "Uint8Array" => BinaryKind::Uint8,
            "Uint8ClampedArray" => BinaryKind::Uint8Clamped,
            "Int16Array" => BinaryKind::Int16,
            "Uint16Array" => BinaryKind::Uint16,
            "Int32Array" => BinaryKind::Int32,
            "Uint32Array" => BinaryKind::Uint32,
            "Float32Array" => BinaryKind::Float32,
            "Float64Array" => BinaryKind::Float64,
            "BigInt64Array" => BinaryKind::BigInt64,
            "BigUint64Array" => BinaryKind::BigUint64,
            other => panic!("unknown binary kind {other}"),
        }
    }
    fn number(j: &Json) -> f64 {
        match j {
            Json::String(s) => match s.as_str() {
                "NaN" => f64::NAN,
                "-0" => -0.0,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                other => panic!("unknown number {other}"),
            },
            other => other.as_f64().unwrap(),
        }
    }
    fn text(j: &Json) -> String {
        j.as_str().unwrap().to_owned()
    }
    fn parse(j: &Json) -> Value {
        match j {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(_) => Value::Number(number(j)),
            Json::String(s) => Value::String(s.clone()),
            Json::Array(items) => Value::Array(items.iter().map(parse).collect()),
            Json::Object(o) => {
                let (key, arg) = o.iter().next().unwrap();
                let pairs = |a: &Json| -> Vec<(Value, Value)> {
                    let pairs = a.as_array().unwrap().iter();
                    pairs
                        .map(|p| (parse(&p[0]), parse(&p[1])))
                        .collect::<Vec<_>>()
                };
                match key.as_str() {
                    "undefined" => Value::Undefined,
                    "number" => Value::Number(number(arg)),
                    "bigint" => Value::BigInt(text(arg).parse().unwrap()),
                    "object" => Value::Object(
                        pairs(arg)
                            .into_iter()
                            .map(|(k, v)| (k.as_str().unwrap().to_owned(), v))
                            .collect(),
                    ),
                    "map" => Value::Map(pairs(arg)),
                    "set" => Value::Set(arg.as_array().unwrap().iter().map(parse).collect()),
                    "date" => Value::Date(number(arg)),
                    "regexp" => Value::RegExp {
                        source: text(&arg[0]),
                        flags: text(&arg[1]),
                    },
                    "error" => Value::Error(msgport::ErrorValue {
                        name: text(&arg[0]),
                        message: text(&arg[1]),
                        stack: arg[2].as_str().map(str::to_owned),
                    }),
                    "binary" => Value::Binary(Binary {
                        kind: kind(arg[0].as_str().unwrap()),
                        bytes: hex(arg[1].as_str().unwrap()),
                    }),
                    "port" => Value::Port(arg.as_u64().unwrap() as u32),
                    other => panic!("unknown notation {other}"),
                }
            }
        }
    }
    /// Equality where NaN equals NaN and -0 differs from 0 (what the vectors mean).
    fn same(a: &Value, b: &Value) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }
    let file: Json =
        serde_json::from_str(include_str!("../../../testdata/wire-vectors.json")).unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 60);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let value = parse(&v["value"]);
        let bytes = hex(v["cbor"].as_str().unwrap());
        let decoded = decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            same(&decoded, &value),
            "{name}: decoded {decoded:?}, want {value:?}"
        );
        if v["direction"] == "both" {
            assert_eq!(encode(&value), bytes, "{name}: encoding");
        }
    }
}
