//! `pytier._native`: the Python extension module through which the `pytier`
//! package (`interposer/python/pytier/_boot.py`) starts and asks the
//! interposer. A plain extension module, not a library opened with `ctypes`:
//! importing `ctypes` alone cost every interpreter start about 5 M
//! instructions.
//!
//! Only the stable C API is used (`PyModuleDef`, `PyArg_ParseTuple`, ...),
//! whose layout and symbols are the same on every supported CPython; the
//! interpreter's own symbols resolve when it loads the module. Every function
//! runs with the GIL held and catches panics (see `lib.rs`).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::null_mut;

use crate::{Started, classify, page_heat_packed, start, stats_json, stop};

#[repr(C)]
pub struct PyObject {
    _private: [u8; 0],
}

type PyCFunction = unsafe extern "C" fn(*mut PyObject, *mut PyObject) -> *mut PyObject;

#[repr(C)]
struct PyMethodDef {
    name: *const c_char,
    function: Option<PyCFunction>,
    flags: c_int,
    doc: *const c_char,
}

/// `PyModuleDef_Base` followed by `PyModuleDef`'s own fields.
#[repr(C)]
struct PyModuleDef {
    refcount: isize,
    type_: *mut c_void,
    init: *mut c_void,
    index: isize,
    copy: *mut c_void,
    name: *const c_char,
    doc: *const c_char,
    size: isize,
    methods: *mut PyMethodDef,
    slots: *mut c_void,
    traverse: *mut c_void,
    clear: *mut c_void,
    free: *mut c_void,
}

const METH_VARARGS: c_int = 0x1;
const METH_NOARGS: c_int = 0x4;
/// The stable ABI's version, accepted by every CPython 3.
const PYTHON_ABI_VERSION: c_int = 3;

unsafe extern "C" {
    static mut PyExc_RuntimeError: *mut PyObject;
    fn PyModule_Create2(def: *mut PyModuleDef, api_version: c_int) -> *mut PyObject;
    fn PyArg_ParseTuple(args: *mut PyObject, format: *const c_char, ...) -> c_int;
    fn PyErr_SetString(kind: *mut PyObject, message: *const c_char);
    fn Py_BuildValue(format: *const c_char, ...) -> *mut PyObject;
    fn PyBool_FromLong(value: std::ffi::c_long) -> *mut PyObject;
    fn PyUnicode_FromStringAndSize(s: *const c_char, len: isize) -> *mut PyObject;
    fn PyBytes_FromStringAndSize(s: *const c_char, len: isize) -> *mut PyObject;
    fn PyList_Size(list: *mut PyObject) -> isize;
    fn PyList_GetItem(list: *mut PyObject, index: isize) -> *mut PyObject;
    fn PyLong_AsSize_t(value: *mut PyObject) -> usize;
    fn PyErr_Occurred() -> *mut PyObject;
}

macro_rules! method {
    ($name:literal, $function:ident, $flags:ident, $doc:literal) => {
        PyMethodDef { name: $name.as_ptr(), function: Some($function), flags: $flags, doc: $doc.as_ptr() }
    };
}

static mut METHODS: [PyMethodDef; 6] = [
    method!(c"start", py_start, METH_VARARGS,
        c"start(config: bytes, hexversion: int, free_threaded: bool, type_addr: int, socket: bytes) -> bool: True if tracking started, False if it was already running; raises RuntimeError(why) when refused, leaving the process as it was"),
    method!(c"stop", py_stop, METH_NOARGS, c"stop(): stops tracking and removes the control socket"),
    method!(c"stats", py_stats, METH_NOARGS, c"stats() -> str | None: the stats as JSON, None if tracking never started"),
    method!(c"classify", py_classify, METH_VARARGS,
        c"classify(addresses: list[int], by_page: bool) -> bytes: per address 0 cold, 1 warm, 2 hot, 255 not tracked; raises RuntimeError when not tracking"),
    method!(c"page_heat", py_page_heat, METH_NOARGS,
        c"page_heat() -> bytes: each heap page's address (u64) and heat (f32), native order, as of the last cycle; raises RuntimeError when not tracking"),
    PyMethodDef { name: std::ptr::null(), function: None, flags: 0, doc: std::ptr::null() },
];

static mut MODULE: PyModuleDef = PyModuleDef {
    refcount: 1,
    type_: null_mut(),
    init: null_mut(),
    index: 0,
    copy: null_mut(),
    name: c"pytier._native".as_ptr(),
    doc: c"pytier's interposer (see the pytier package)".as_ptr(),
    size: -1,
    methods: (&raw mut METHODS).cast(),
    slots: null_mut(),
    traverse: null_mut(),
    clear: null_mut(),
    free: null_mut(),
};

/// Called by the import system, with the GIL held.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn PyInit__native() -> *mut PyObject {
    // SAFETY: MODULE is a valid definition that lives forever.
    unsafe { PyModule_Create2(&raw mut MODULE, PYTHON_ABI_VERSION) }
}

/// Raises RuntimeError(message) and returns NULL.
unsafe fn raise(message: &str) -> *mut PyObject {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: the GIL is held; both pointers are valid.
    unsafe { PyErr_SetString(PyExc_RuntimeError, message.as_ptr()) };
    null_mut()
}

unsafe fn none() -> *mut PyObject {
    // SAFETY: an empty format builds a new reference to None.
    unsafe { Py_BuildValue(c"".as_ptr()) }
}

fn text(s: *const c_char) -> String {
    // SAFETY: PyArg_ParseTuple's "y" gives a NUL-terminated buffer.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

unsafe extern "C" fn py_start(_module: *mut PyObject, args: *mut PyObject) -> *mut PyObject {
    let (mut config, mut hexversion, mut free_threaded) = (std::ptr::null::<c_char>(), 0u32, 0 as c_int);
    let (mut type_addr, mut socket) = (0isize, std::ptr::null::<c_char>());
    // SAFETY: the format's conversions match the pointers' types.
    let parsed = unsafe {
        PyArg_ParseTuple(
            args,
            c"yIpny".as_ptr(),
            &mut config,
            &mut hexversion,
            &mut free_threaded,
            &mut type_addr,
            &mut socket,
        )
    };
    if parsed == 0 {
        return null_mut();
    }
    match start(&text(config), hexversion, free_threaded != 0, type_addr as usize, &text(socket)) {
        Ok(started) => unsafe { PyBool_FromLong((started == Started::Now) as std::ffi::c_long) },
        Err(why) => unsafe { raise(&why) },
    }
}

unsafe extern "C" fn py_stop(_module: *mut PyObject, _unused: *mut PyObject) -> *mut PyObject {
    stop();
    unsafe { none() }
}

unsafe extern "C" fn py_stats(_module: *mut PyObject, _unused: *mut PyObject) -> *mut PyObject {
    match stats_json() {
        // SAFETY: a valid UTF-8 buffer of that length.
        Some(json) => unsafe { PyUnicode_FromStringAndSize(json.as_ptr().cast(), json.len() as isize) },
        None => unsafe { none() },
    }
}

unsafe extern "C" fn py_page_heat(_module: *mut PyObject, _unused: *mut PyObject) -> *mut PyObject {
    match page_heat_packed() {
        // SAFETY: a buffer of that length.
        Some(packed) => unsafe { PyBytes_FromStringAndSize(packed.as_ptr().cast(), packed.len() as isize) },
        None => unsafe { raise("pytier is not tracking in this process") },
    }
}

unsafe extern "C" fn py_classify(_module: *mut PyObject, args: *mut PyObject) -> *mut PyObject {
    let (mut list, mut by_page) = (null_mut::<PyObject>(), 0 as c_int);
    // SAFETY: "O!" is not used, so the list's type is checked by PyList_Size.
    if unsafe { PyArg_ParseTuple(args, c"Op".as_ptr(), &mut list, &mut by_page) } == 0 {
        return null_mut();
    }
    // SAFETY: the GIL is held; PyList_Size fails (and raises) on a non-list.
    let n = unsafe { PyList_Size(list) };
    if n < 0 {
        return null_mut();
    }
    let mut addresses = Vec::with_capacity(n as usize);
    for i in 0..n {
        // SAFETY: `i` is in range; the item is a borrowed reference.
        let address = unsafe { PyLong_AsSize_t(PyList_GetItem(list, i)) };
        if address == usize::MAX && unsafe { !PyErr_Occurred().is_null() } {
            return null_mut();
        }
        addresses.push(address);
    }
    match classify(&addresses, by_page != 0) {
        // SAFETY: a buffer of that length.
        Some(classes) => unsafe { PyBytes_FromStringAndSize(classes.as_ptr().cast(), classes.len() as isize) },
        None => unsafe { raise("pytier is not tracking in this process") },
    }
}
