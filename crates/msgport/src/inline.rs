//! [`Inline`]: a message's data stored in place, without an allocation, when it is small.
//!
//! Within one process a message's data is the sender's own value, moved to the receiver. Boxing
//! it costs an allocation on the posting thread and a free on the receiving one (a cross-thread
//! free), which measured here halves the throughput of small messages between two CPUs. Values
//! of at most [`CAPACITY`] bytes and alignment 8 are kept in a fixed buffer instead, with a
//! table of the three operations the port needs: the type's id, a conversion to [`Value`], and
//! drop.
//!
//! Contract (the only `unsafe` outside `sys`): the buffer holds an initialised `T` exactly while
//! `live` is set; `T` is `Send + 'static` (checked by the bounds of [`Inline::new`]), fits the
//! buffer's size and alignment (checked at run time before writing), and is read back only as
//! the same `T` (checked by type id). Tested below: drops happen exactly once, moves preserve the
//! value, a wrong type is refused.

#![allow(unsafe_code)]

use std::any::TypeId;
use std::marker::PhantomData;
use std::mem::{align_of, size_of, MaybeUninit};

use crate::error::DecodeError;
use crate::native::NativeData;
use crate::value::Value;

/// The largest value stored in place, in bytes.
pub(crate) const CAPACITY: usize = 64;

#[repr(C, align(8))]
struct Buffer(MaybeUninit<[u8; CAPACITY]>);

struct VTable {
    type_id: fn() -> TypeId,
    to_value: unsafe fn(*const u8) -> Result<Value, DecodeError>,
    drop_in_place: unsafe fn(*mut u8),
}

struct VTableOf<T>(PhantomData<T>);

impl<T: NativeData + 'static> VTableOf<T> {
    const VTABLE: VTable = VTable {
        type_id: TypeId::of::<T>,
        to_value: to_value::<T>,
        drop_in_place: drop_in_place::<T>,
    };
}

/// # Safety
/// `ptr` points to a live, initialised `T`.
unsafe fn to_value<T: NativeData>(ptr: *const u8) -> Result<Value, DecodeError> {
    // SAFETY: guaranteed by the caller.
    unsafe { &*ptr.cast::<T>() }.to_value()
}

/// # Safety
/// `ptr` points to a live, initialised `T` that is not used afterwards.
unsafe fn drop_in_place<T>(ptr: *mut u8) {
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::drop_in_place(ptr.cast::<T>()) }
}

/// A small value of some `Send + 'static` type, stored in place.
pub(crate) struct Inline {
    buffer: Buffer,
    vtable: &'static VTable,
    live: bool,
    /// Not `Sync`: the stored value is only `Send`, and `to_value` reads it through `&self`.
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

// SAFETY: only `Send` values are stored (the bound of `Inline::new`); `Inline` is not `Sync`
// (the marker above), so `&Inline` never reaches another thread.
unsafe impl Send for Inline {}

impl Inline {
    /// Stores `value` in place, or gives it back when it does not fit.
    pub(crate) fn new<T: NativeData + 'static>(value: T) -> Result<Inline, T> {
        if size_of::<T>() > CAPACITY || align_of::<T>() > align_of::<Buffer>() {
            return Err(value);
        }
        let mut buffer = Buffer(MaybeUninit::uninit());
        // SAFETY: the buffer is at least as large and as aligned as `T` (checked above), and
        // it is uninitialised, so nothing is overwritten without being dropped.
        unsafe { buffer.0.as_mut_ptr().cast::<T>().write(value) };
        Ok(Inline {
            buffer,
            vtable: &VTableOf::<T>::VTABLE,
            live: true,
            _not_sync: PhantomData,
        })
    }

    /// Whether the stored value is a `T`.
    #[inline]
    pub(crate) fn is<T: 'static>(&self) -> bool {
        self.live && (self.vtable.type_id)() == TypeId::of::<T>()
    }

    /// Moves the value out as a `T` where it lies, leaving this `Inline` empty (its drop does
    /// nothing), or `None` if it is not one. Reading it in place spares the receiver a move of
    /// the whole buffer first (a fifth of a message's cost in a one-thread post-and-take loop).
    #[inline]
    pub(crate) fn take_in_place<T: 'static>(&mut self) -> Option<T> {
        if !self.is::<T>() {
            return None;
        }
        self.live = false;
        // SAFETY: the buffer holds a live `T` (type id checked above); `live` is now false,
        // so it is neither dropped nor read again.
        Some(unsafe { self.buffer.0.as_ptr().cast::<T>().read() })
    }

    /// The value as a [`Value`].
    pub(crate) fn to_value(&self) -> Result<Value, DecodeError> {
        if !self.live {
            return Err(DecodeError::Taken);
        }
        // SAFETY: the buffer holds a live value of the type the vtable was made for.
        unsafe { (self.vtable.to_value)(self.buffer.0.as_ptr().cast::<u8>()) }
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        if self.live {
            self.live = false;
            // SAFETY: the buffer holds a live value of the vtable's type, dropped once here.
            unsafe { (self.vtable.drop_in_place)(self.buffer.0.as_mut_ptr().cast::<u8>()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(serde::Serialize)]
    struct Counted(#[serde(skip)] Arc<AtomicUsize>, u32);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn drops_exactly_once_whether_taken_or_not() {
        let drops = Arc::new(AtomicUsize::new(0));
        let kept = Inline::new(Counted(drops.clone(), 1)).ok().unwrap();
        drop(kept);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        let mut taken = Inline::new(Counted(drops.clone(), 2)).ok().unwrap();
        let value: Counted = taken.take_in_place().unwrap();
        assert!(taken.take_in_place::<Counted>().is_none(), "taken once");
        drop(taken);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(value.1, 2);
        drop(value);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn moves_keep_the_value_and_wrong_types_are_refused() {
        let a = Inline::new(String::from("moved around")).ok().unwrap();
        let boxed = Box::new(a);
        let mut back = *boxed;
        assert!(back.take_in_place::<u64>().is_none());
        assert_eq!(back.to_value().unwrap(), Value::from("moved around"));
        assert_eq!(back.take_in_place::<String>().unwrap(), "moved around");
        assert!(matches!(back.to_value(), Err(DecodeError::Taken)));
    }

    #[test]
    fn large_or_overaligned_values_are_given_back() {
        assert!(Inline::new([0u64; CAPACITY / 8 + 1]).is_err());
        #[derive(serde::Serialize)]
        #[repr(align(16))]
        struct Wide(u8);
        assert!(Inline::new(Wide(1)).is_err());
        assert!(Inline::new([7u64; 8]).is_ok());
    }
}
