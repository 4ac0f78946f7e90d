//! Recycled memory for the two native objects every call creates: the
//! handler's `Message` and the finished `Done`.
//!
//! pyo3 creates an instance through the base type's `tp_new` (type slot
//! look-ups, `object.__new__`, a zeroed allocation) and frees it through a
//! trampoline that sets up its GIL bookkeeping: about 600 instructions per
//! object, as much as the engine's whole resolution of a route. A
//! [`Recycler`] keeps the memory of freed instances instead (a short list,
//! guarded by the GIL): its `tp_dealloc` drops the contents (so nothing the
//! object held is kept alive) and keeps the block; [`Recycler::create`]
//! takes a block, initialises the object header and writes the contents in
//! place.
//!
//! This writes into pyo3's object layout and type object, so it is
//! installed only after checks that make a different layout harmless
//! ([`Recycler::install`]): the class is frozen (no borrow flag), has no
//! `__dict__` or weakref slot, its instance size is the contents'
//! offset plus the Rust struct (nothing else in the object), and the
//! `tp_dealloc` field read at its fixed place in the type object is the one
//! `PyType_GetSlot` reports. Otherwise objects are made by pyo3 as usual.

use std::cell::UnsafeCell;
use std::os::raw::c_void;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::{PyClass, PyClassInitializer, PyTypeInfo};

/// Blocks kept per type: enough for a burst of concurrent calls.
const KEEP: usize = 256;

struct State {
    /// False until `install` checked the layout.
    active: bool,
    /// Instances take part in garbage collection (pyo3 gives every class
    /// `Py_TPFLAGS_HAVE_GC`): untracked when freed, tracked when reused.
    gc: bool,
    /// Offset of the Rust struct inside the object.
    offset: usize,
    /// pyo3's `tp_dealloc`, for blocks beyond `KEEP`.
    dealloc: Option<unsafe extern "C" fn(*mut ffi::PyObject)>,
    free: Vec<*mut ffi::PyObject>,
}

/// The recycled blocks of one class.
pub struct Recycler(UnsafeCell<State>);

// SAFETY: every access happens with the GIL held (the wheel is abi3, which
// free-threaded interpreters do not load), and no reference into the state
// is held across a call that could run Python code.
unsafe impl Sync for Recycler {}

/// A class whose instances are recycled.
pub trait Recyclable: PyClass<Frozen = True> + PyTypeInfo + Sync + Into<PyClassInitializer<Self>> {
    fn recycler() -> &'static Recycler;
}

impl Recycler {
    pub const fn new() -> Self {
        Recycler(UnsafeCell::new(State { active: false, gc: false, offset: 0, dealloc: None, free: Vec::new() }))
    }

    /// The state; the GIL (`_py`) serialises access.
    #[allow(clippy::mut_from_ref)]
    fn state(&self, _py: Python<'_>) -> &mut State {
        // SAFETY: see `impl Sync`; callers keep the reference short.
        unsafe { &mut *self.0.get() }
    }

    /// Check `T`'s layout with a sample instance and install the recycling
    /// `tp_dealloc`. Returns whether it did.
    pub fn install<T: Recyclable>(py: Python<'_>, sample: T) -> PyResult<bool> {
        let tp = T::type_object(py);
        let tp_ptr = tp.as_type_ptr();
        let basic: usize = tp.getattr("__basicsize__")?.extract()?;
        let weak: usize = tp.getattr("__weakrefoffset__")?.extract()?;
        let dict: usize = tp.getattr("__dictoffset__")?.extract()?;
        let obj = Py::new(py, sample)?;
        let offset = (obj.get() as *const T as usize).wrapping_sub(obj.as_ptr() as usize);
        // SAFETY: `tp_ptr` is a live type object; reads stay within its
        // fixed header, and the one write happens after the checks.
        unsafe {
            let flags = ffi::PyType_GetFlags(tp_ptr);
            let heap = flags & ffi::Py_TPFLAGS_HEAPTYPE != 0;
            let gc = flags & ffi::Py_TPFLAGS_HAVE_GC != 0;
            if !heap || weak != 0 || dict != 0 || offset + std::mem::size_of::<T>() != basic {
                return Ok(false);
            }
            let slot = ffi::PyType_GetSlot(tp_ptr, ffi::Py_tp_dealloc);
            // PyObject_VAR_HEAD (3 words), tp_name, tp_basicsize,
            // tp_itemsize, then tp_dealloc (unchanged since Python 2).
            let field = (tp_ptr as *mut u8).add(6 * std::mem::size_of::<usize>()) as *mut *mut c_void;
            if slot.is_null() || *field != slot {
                return Ok(false);
            }
            let st = T::recycler().state(py);
            st.offset = offset;
            st.gc = gc;
            st.dealloc = Some(std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut ffi::PyObject)>(slot));
            st.free.reserve_exact(KEEP);
            st.active = true;
            *field = recycling_dealloc::<T> as *mut c_void;
        }
        drop(obj);
        Ok(true)
    }

    /// A new `T` object holding `value`, in a recycled block when there is one.
    pub fn create<T: Recyclable>(py: Python<'_>, value: T) -> PyResult<Py<T>> {
        let st = T::recycler().state(py);
        if st.active
            && let Some(obj) = st.free.pop()
        {
            let (offset, gc) = (st.offset, st.gc);
            // SAFETY: `obj` is a block of a freed `T` object (its contents
            // dropped); `PyObject_Init` sets its type (taking a reference to
            // it) and reference count, then the contents are written where
            // pyo3 keeps them (checked by `install`).
            unsafe {
                ffi::PyObject_Init(obj, T::type_object_raw(py));
                std::ptr::write((obj as *mut u8).add(offset) as *mut T, value);
                if gc {
                    ffi::PyObject_GC_Track(obj.cast());
                }
                return Ok(Bound::from_owned_ptr(py, obj).cast_into_unchecked::<T>().unbind());
            }
        }
        Py::new(py, value)
    }
}

/// `tp_dealloc` of a recycled class: drop the contents, keep the block.
unsafe extern "C" fn recycling_dealloc<T: Recyclable>(obj: *mut ffi::PyObject) {
    // SAFETY (whole body): called by the interpreter with the GIL held, on a
    // `T` object whose reference count reached zero.
    unsafe {
        let py = Python::assume_attached();
        let st = T::recycler().state(py);
        let (offset, gc, dealloc) = (st.offset, st.gc, st.dealloc);
        if st.free.len() >= KEEP {
            if let Some(d) = dealloc {
                d(obj);
            }
            return;
        }
        if gc {
            // The collector must not visit an object being taken apart.
            ffi::PyObject_GC_UnTrack(obj.cast());
        }
        // Dropping the contents may run Python code (a reference released),
        // even code that makes or frees another `T`: the state is looked up
        // again afterwards.
        let contents = (obj as *mut u8).add(offset) as *mut T;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| std::ptr::drop_in_place(contents))).is_err() {
            // A panic in a destructor: leak the block rather than unwind into C.
            return;
        }
        let tp = ffi::Py_TYPE(obj);
        let st = T::recycler().state(py);
        if st.free.len() < KEEP {
            st.free.push(obj);
        } else {
            if gc { ffi::PyObject_GC_Del(obj.cast()) } else { ffi::PyObject_Free(obj.cast()) }
        }
        // A heap type's instances hold a reference to it (PyObject_Init takes a new one).
        ffi::Py_DECREF(tp.cast());
    }
}
