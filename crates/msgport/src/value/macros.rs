//! The [`value!`](crate::value!) literal macro.

/// Builds a [`Value`](crate::Value) from a JSON-like literal.
///
/// Objects take string-literal keys (or any expression in parentheses); `null` and `undefined`
/// are keywords; anything else is an expression converted with `Value::from`.
///
/// ```
/// use msgport::{value, Value};
///
/// let n = 3;
/// let v = value!({
///     "answer": 42,
///     "list": [1, "two", null, undefined, { "nested": true }],
///     (format!("key{n}")): n * 2,
/// });
/// assert_eq!(v["answer"], Value::Number(42.0));
/// assert_eq!(v["list"][3], Value::Undefined);
/// assert_eq!(v["key3"], Value::Number(6.0));
/// ```
#[macro_export]
macro_rules! value {
    (null) => { $crate::Value::Null };
    (undefined) => { $crate::Value::Undefined };
    ([]) => { $crate::Value::Array(::std::vec::Vec::new()) };
    ([ $($tt:tt)+ ]) => {{
        let mut items = ::std::vec::Vec::new();
        $crate::__value_array!(items () $($tt)+);
        $crate::Value::Array(items)
    }};
    ({}) => { $crate::Value::Object(::std::vec::Vec::new()) };
    ({ $($tt:tt)+ }) => {{
        let mut entries: ::std::vec::Vec<(::std::string::String, $crate::Value)> =
            ::std::vec::Vec::new();
        $crate::__value_object!(entries () () $($tt)+);
        $crate::Value::Object(entries)
    }};
    ($e:expr) => { $crate::Value::from($e) };
}

/// Munches the elements of an array literal, each up to the next top-level comma.
#[doc(hidden)]
#[macro_export]
macro_rules! __value_array {
    ($v:ident ()) => {};
    ($v:ident ($($elem:tt)+)) => { $v.push($crate::value!($($elem)+)); };
    ($v:ident ($($elem:tt)+) , $($rest:tt)*) => {
        $v.push($crate::value!($($elem)+));
        $crate::__value_array!($v () $($rest)*);
    };
    ($v:ident ($($elem:tt)*) $next:tt $($rest:tt)*) => {
        $crate::__value_array!($v ($($elem)* $next) $($rest)*);
    };
}

/// Munches the entries of an object literal: a key, a colon, a value up to the next comma.
#[doc(hidden)]
#[macro_export]
macro_rules! __value_object {
    ($v:ident () ()) => {};
    ($v:ident ($key:expr) ($($val:tt)+)) => {
        $v.push((::std::string::String::from($key), $crate::value!($($val)+)));
    };
    ($v:ident ($key:expr) ($($val:tt)+) , $($rest:tt)*) => {
        $v.push((::std::string::String::from($key), $crate::value!($($val)+)));
        $crate::__value_object!($v () () $($rest)*);
    };
    ($v:ident ($key:expr) ($($val:tt)*) $next:tt $($rest:tt)*) => {
        $crate::__value_object!($v ($key) ($($val)* $next) $($rest)*);
    };
    ($v:ident () () $key:literal : $($rest:tt)*) => {
        $crate::__value_object!($v ($key) () $($rest)*);
    };
    ($v:ident () () ($key:expr) : $($rest:tt)*) => {
        $crate::__value_object!($v ($key) () $($rest)*);
    };
}
