//! Our own minimal bindings to Envoy's dynamic modules ABI (`envoy.filters.http.dynamic_modules`,
//! ABI `v0.2.0`, Envoy 1.40), written from `source/extensions/dynamic_modules/abi/abi.h`.
//!
//! This is the only module with `unsafe` code. It has three parts:
//!
//! - the C types and the callbacks Envoy exports (`extern "C"` block), only the ones we use;
//! - safe handles ([`FilterHandle`], [`ConfigHandle`], [`Scheduler`]) whose methods wrap those
//!   callbacks;
//! - the event hooks Envoy calls (`#[no_mangle] extern "C" fn envoy_dynamic_module_on_*`), each a
//!   thin shell that turns raw pointers into safe values and calls [`crate::hooks`] inside
//!   [`guard`], so that no panic crosses the FFI boundary.
//!
//! Lifetimes the rest of the crate relies on (abi.h): a filter's Envoy pointer is valid from
//! `on_http_filter_new` until `on_http_filter_destroy`, on the worker thread that created it; a
//! configuration's Envoy pointer from `on_http_filter_config_new` until its destroy hook; buffers
//! Envoy hands out are valid until the hook returns or a setter is called. [`FilterHandle`]s are
//! therefore created only here, from a hook's arguments, and `crate::hooks` keeps them only in
//! its per-thread registry between the filter's new and destroy hooks.

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The ABI version this module is built against (abi.h `ENVOY_DYNAMIC_MODULES_ABI_VERSION`).
pub const ABI_VERSION: &CStr = c"v0.2.0";

// ---------------------------------------------------------------------------------------------
// Types (abi.h "Common Types" and "HTTP Filter Types")
// ---------------------------------------------------------------------------------------------

/// `envoy_dynamic_module_type_envoy_buffer` / `_module_buffer`: a pointer and a length.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawBuffer {
    ptr: *const c_char,
    length: usize,
}

impl RawBuffer {
    const NULL: RawBuffer = RawBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };

    fn from_bytes(bytes: &[u8]) -> RawBuffer {
        RawBuffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    /// The bytes of a buffer Envoy handed us.
    ///
    /// # Safety
    /// `self` must come from Envoy and still be valid (abi.h: until the end of the current hook
    /// unless a setter was called), and nothing may write to it while the slice lives.
    unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees that Envoy's buffer of `length` bytes is valid and
        // unchanged while the slice lives.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length) }
    }
}

/// `envoy_dynamic_module_type_{module,envoy}_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

impl RawHeader {
    const NULL: RawHeader = RawHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };

    fn from_pair(name: &str, value: &str) -> RawHeader {
        RawHeader {
            key_ptr: name.as_ptr().cast(),
            key_length: name.len(),
            value_ptr: value.as_ptr().cast(),
            value_length: value.len(),
        }
    }
}

// C enums are `int`-sized on the platforms Envoy supports.
type HeaderType = u32;
const REQUEST_HEADER: HeaderType = 0;
type BodyType = u32;
const RECEIVED_REQUEST_BODY: BodyType = 0;
const BUFFERED_REQUEST_BODY: BodyType = 1;
type LogLevel = u32;
type CalloutInitResult = u32;
const CALLOUT_SUCCESS: CalloutInitResult = 0;
type CalloutResult = u32;
const CALLOUT_RESULT_SUCCESS: CalloutResult = 0;
type MetricsResult = u32;
const METRICS_SUCCESS: MetricsResult = 0;

/// What a request-headers hook returns (`FilterHeadersStatus`).
pub const HEADERS_CONTINUE: u32 = 0;
pub const HEADERS_STOP_ITERATION: u32 = 1;
/// What a request-body hook returns (`FilterDataStatus`).
pub const BODY_CONTINUE: u32 = 0;
pub const BODY_STOP_AND_BUFFER: u32 = 1;
/// What a trailers hook returns (`FilterTrailersStatus`).
pub const TRAILERS_CONTINUE: u32 = 0;
pub const TRAILERS_STOP: u32 = 1;

/// The log levels of `envoy_dynamic_module_type_log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

// ---------------------------------------------------------------------------------------------
// Callbacks Envoy exports (resolved from the Envoy binary when the module is loaded)
// ---------------------------------------------------------------------------------------------

extern "C" {
    fn envoy_dynamic_module_callback_log(level: LogLevel, message: RawBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: LogLevel) -> bool;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: RawBuffer,
        label_names: *mut RawBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *mut RawBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: HeaderType,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: HeaderType,
        result: *mut RawHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        header_type: HeaderType,
        key: RawBuffer,
        value: RawBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: HeaderType,
        key: RawBuffer,
        value: RawBuffer,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status_code: u32,
        headers: *mut RawHeader,
        headers_size: usize,
        body: RawBuffer,
        details: RawBuffer,
    );

    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: *mut c_void,
        body_type: BodyType,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: *mut c_void,
        body_type: BodyType,
        result: *mut RawBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_size(
        filter: *mut c_void,
        body_type: BodyType,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_append_body(
        filter: *mut c_void,
        body_type: BodyType,
        data: RawBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(
        filter: *mut c_void,
        body_type: BodyType,
        number_of_bytes: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter: *mut c_void,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);

    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: *mut c_void,
        callout_id: *mut u64,
        cluster_name: RawBuffer,
        headers: *mut RawHeader,
        headers_size: usize,
        body: RawBuffer,
        timeout_milliseconds: u64,
    ) -> CalloutInitResult;

    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
}

// ---------------------------------------------------------------------------------------------
// Safe handles
// ---------------------------------------------------------------------------------------------

/// Logs through Envoy (`[dynamic_modules]` logger).
pub fn log(level: Level, message: &str) {
    // SAFETY: the message buffer is valid for the call; Envoy only reads it during the call.
    unsafe {
        envoy_dynamic_module_callback_log(
            level as LogLevel,
            RawBuffer::from_bytes(message.as_bytes()),
        )
    }
}

/// Whether Envoy would print a line at `level` (to skip formatting it otherwise).
pub fn log_enabled(level: Level) -> bool {
    // SAFETY: a plain query without pointers.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as LogLevel) }
}

/// Envoy's `DynamicModuleHttpFilterConfig`, valid during `on_http_filter_config_new`.
pub struct ConfigHandle(*mut c_void);

impl ConfigHandle {
    /// Defines a counter (no labels); its id, or `None` if Envoy refused.
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: `self.0` is the config pointer of the running config-new hook (the only place
        // a ConfigHandle exists); the name is read during the call; `id` outlives the call.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                RawBuffer::from_bytes(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }
}

/// Envoy's `DynamicModuleHttpFilter` of one HTTP stream. Created only from a hook's arguments in
/// this module; `crate::hooks` keeps it only between the filter's new and destroy hooks and uses
/// it only on the thread of that filter, which is what makes its methods sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterHandle(*mut c_void);

/// An HTTP callout that could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalloutError(u32);

impl std::fmt::Display for CalloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            1 => "missing required headers",
            2 => "cluster not found",
            3 => "duplicate callout id",
            4 => "cannot create request (no healthy upstream?)",
            _ => "unknown error",
        })
    }
}

impl FilterHandle {
    /// Hands each request header to `each` (name, value), without keeping Envoy's buffers.
    pub fn request_headers(self, mut each: impl FnMut(&[u8], &[u8])) {
        // SAFETY: a live filter (see the type's comment); no pointers passed.
        let n =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, REQUEST_HEADER) };
        if n == 0 {
            return;
        }
        let mut raw = vec![RawHeader::NULL; n];
        // SAFETY: `raw` has room for the `n` headers Envoy just counted; the filter is live.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_headers(self.0, REQUEST_HEADER, raw.as_mut_ptr())
        };
        if !ok {
            return;
        }
        for h in &raw {
            // SAFETY: Envoy filled these with pointers into its header map, valid until this
            // hook returns or a setter is called; `each` copies them before either happens.
            let (k, v) = unsafe {
                (
                    RawBuffer {
                        ptr: h.key_ptr,
                        length: h.key_length,
                    }
                    .as_slice(),
                    RawBuffer {
                        ptr: h.value_ptr,
                        length: h.value_length,
                    }
                    .as_slice(),
                )
            };
            each(k, v);
        }
    }

    /// Sets (replaces) a request header.
    pub fn set_request_header(self, name: &str, value: &str) {
        // SAFETY: live filter; both buffers are read during the call only.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                REQUEST_HEADER,
                RawBuffer::from_bytes(name.as_bytes()),
                RawBuffer::from_bytes(value.as_bytes()),
            );
        }
    }

    /// Adds a request header value (keeps others of the same name).
    pub fn add_request_header(self, name: &str, value: &str) {
        // SAFETY: live filter; both buffers are read during the call only.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                REQUEST_HEADER,
                RawBuffer::from_bytes(name.as_bytes()),
                RawBuffer::from_bytes(value.as_bytes()),
            );
        }
    }

    /// Removes a request header (abi.h: `set_header` with a null value removes it).
    pub fn remove_request_header(self, name: &str) {
        // SAFETY: live filter; the key is read during the call; a null value means "remove".
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                REQUEST_HEADER,
                RawBuffer::from_bytes(name.as_bytes()),
                RawBuffer::NULL,
            );
        }
    }

    fn body_chunks(self, body_type: BodyType, out: &mut Vec<u8>) {
        // SAFETY: live filter; no pointers passed.
        let n =
            unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, body_type) };
        if n == 0 {
            return;
        }
        let mut chunks = vec![RawBuffer::NULL; n];
        // SAFETY: `chunks` has room for the `n` chunks Envoy just counted.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(
                self.0,
                body_type,
                chunks.as_mut_ptr(),
            )
        };
        if !ok {
            return;
        }
        for chunk in chunks {
            // SAFETY: Envoy's body slices, valid until the hook returns or the body changes; we
            // copy them at once.
            out.extend_from_slice(unsafe { chunk.as_slice() });
        }
    }

    fn body_size(self, body_type: BodyType) -> usize {
        // SAFETY: live filter; no pointers passed.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.0, body_type) }
    }

    /// Whether the chunk being delivered is the buffered body itself (an earlier filter
    /// buffered and resumed): then it must not be counted twice.
    fn received_is_buffered(self) -> bool {
        // SAFETY: live filter; no pointers passed.
        unsafe { envoy_dynamic_module_callback_http_received_buffered_request_body(self.0) }
    }

    /// The request body seen so far: what is buffered plus, inside a body hook (`in_body_hook`),
    /// the chunk being delivered.
    pub fn request_body(self, in_body_hook: bool) -> Vec<u8> {
        let mut body = Vec::new();
        self.body_chunks(BUFFERED_REQUEST_BODY, &mut body);
        if in_body_hook && !self.received_is_buffered() {
            self.body_chunks(RECEIVED_REQUEST_BODY, &mut body);
        }
        body
    }

    /// The size of [`FilterHandle::request_body`].
    pub fn request_body_size(self, in_body_hook: bool) -> usize {
        let mut size = self.body_size(BUFFERED_REQUEST_BODY);
        if in_body_hook && !self.received_is_buffered() {
            size += self.body_size(RECEIVED_REQUEST_BODY);
        }
        size
    }

    /// Replaces the whole request body seen so far with `body`.
    pub fn replace_request_body(self, in_body_hook: bool, body: &[u8]) {
        let received = in_body_hook && !self.received_is_buffered();
        // SAFETY: live filter; draining more than there is drains all (abi.h); `body` is read
        // during the append call only.
        unsafe {
            envoy_dynamic_module_callback_http_drain_body(
                self.0,
                BUFFERED_REQUEST_BODY,
                usize::MAX,
            );
            if received {
                envoy_dynamic_module_callback_http_drain_body(
                    self.0,
                    RECEIVED_REQUEST_BODY,
                    usize::MAX,
                );
            }
            let target = if received {
                RECEIVED_REQUEST_BODY
            } else {
                BUFFERED_REQUEST_BODY
            };
            envoy_dynamic_module_callback_http_append_body(
                self.0,
                target,
                RawBuffer::from_bytes(body),
            );
        }
    }

    /// Answers the request locally.
    pub fn send_response(self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let mut raw: Vec<RawHeader> = headers
            .iter()
            .map(|(k, v)| RawHeader::from_pair(k, v))
            .collect();
        let details = b"keyrealm";
        // SAFETY: live filter; `raw` points into `headers`, which outlive the call, as do `body`
        // and `details`; Envoy copies what it keeps.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                raw.as_mut_ptr(),
                raw.len(),
                RawBuffer::from_bytes(body),
                RawBuffer::from_bytes(details),
            );
        }
    }

    /// Resumes a request paused in the decoding direction.
    pub fn continue_decoding(self) {
        // SAFETY: live filter; no pointers passed.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// Adds `n` to a counter defined by this filter's configuration.
    pub fn increment_counter(self, id: usize, n: u64) {
        // SAFETY: live filter; no labels (null, 0) as defined.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.0,
                id,
                std::ptr::null_mut(),
                0,
                n,
            );
        }
    }

    /// Starts an HTTP callout; the answer comes to `on_http_filter_http_callout_done` of this
    /// filter with the returned id.
    pub fn http_callout(
        self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutError> {
        let mut raw: Vec<RawHeader> = headers
            .iter()
            .map(|(k, v)| RawHeader::from_pair(k, v))
            .collect();
        let mut id = 0u64;
        // SAFETY: live filter; every buffer outlives the call and Envoy copies the request.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.0,
                &mut id,
                RawBuffer::from_bytes(cluster.as_bytes()),
                raw.as_mut_ptr(),
                raw.len(),
                RawBuffer::from_bytes(body),
                timeout_ms,
            )
        };
        if result == CALLOUT_SUCCESS {
            Ok(id)
        } else {
            Err(CalloutError(result))
        }
    }

    /// A scheduler that runs `on_http_filter_scheduled` for this filter on its worker thread.
    pub fn scheduler(self) -> Option<Scheduler> {
        // SAFETY: live filter; Envoy allocates the scheduler, which we own until we delete it.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(Scheduler(ptr))
    }
}

/// A filter's scheduler: commits events from any thread (a no-op once the filter is gone);
/// deleted when dropped.
#[derive(Debug)]
pub struct Scheduler(*mut c_void);

// SAFETY: abi.h: committing is safe from any thread; deletion (Drop) happens once, by the owner.
unsafe impl Send for Scheduler {}
// SAFETY: `commit` is the only `&self` method and abi.h allows it from any thread.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: a scheduler from `scheduler_new`, not yet deleted (Drop has not run).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: deleted exactly once, here.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// The answer of an HTTP callout as Envoy delivered it.
pub struct CalloutAnswer {
    /// `:status`, when the callout succeeded and had one.
    pub status: Option<u32>,
    pub body: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// Panic barrier
// ---------------------------------------------------------------------------------------------

/// Runs `f`, catching a panic: then logs it and returns `on_panic()`. Every hook goes through
/// this, so that no unwind crosses into Envoy.
pub fn guard<T>(hook: &str, f: impl FnOnce() -> T, on_panic: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            log(
                Level::Error,
                &format!("keyrealm: internal error in {hook}: {what}"),
            );
            // A second panic in the fallback is caught too (it only logs and answers).
            catch_unwind(AssertUnwindSafe(on_panic)).unwrap_or_else(|_| std::process::abort())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Event hooks Envoy calls
// ---------------------------------------------------------------------------------------------

/// Module load: declares the ABI version it was built for.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guard(
        "program_init",
        || {
            crate::hooks::program_init();
            ABI_VERSION.as_ptr()
        },
        std::ptr::null,
    )
}

/// A filter configuration (main thread). Null refuses it.
///
/// # Safety
/// Called by Envoy with valid buffers for `name` and `config` (abi.h).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy_ptr: *mut c_void,
    name: RawBuffer,
    config: RawBuffer,
) -> *const c_void {
    // SAFETY: Envoy's buffers are valid for the duration of this hook; we copy what we keep.
    let (name, config) = unsafe { (name.as_slice(), config.as_slice()) };
    let handle = ConfigHandle(config_envoy_ptr);
    guard(
        "http_filter_config_new",
        || match crate::hooks::config_new(&handle, name, config) {
            Some(config) => Box::into_raw(Box::new(config)).cast_const().cast(),
            None => std::ptr::null(),
        },
        std::ptr::null,
    )
}

/// # Safety
/// `config_ptr` is a pointer returned by our config-new hook, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config_ptr: *const c_void,
) {
    if config_ptr.is_null() {
        return;
    }
    // SAFETY: created by Box::into_raw in config_new; Envoy destroys it exactly once.
    let config =
        unsafe { Box::from_raw(config_ptr.cast_mut().cast::<crate::hooks::FilterConfig>()) };
    guard(
        "http_filter_config_destroy",
        || crate::hooks::config_destroy(*config),
        || (),
    );
}

/// Per-route configuration: not supported (refused).
///
/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: RawBuffer,
    _config: RawBuffer,
) -> *const c_void {
    log(
        Level::Error,
        "keyrealm: per-route configuration is not supported",
    );
    std::ptr::null()
}

/// # Safety
/// Never called with a pointer of ours (we create none).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    _config: *const c_void,
) {
}

/// Looks up the filter object behind a hook's module pointer.
///
/// # Safety
/// `ptr` is a pointer returned by our filter-new hook and not yet destroyed.
unsafe fn stream<'a>(ptr: *const c_void) -> &'a crate::hooks::StreamFilter {
    // SAFETY: per the caller; Envoy passes the pointer we returned until the destroy hook.
    unsafe { &*ptr.cast::<crate::hooks::StreamFilter>() }
}

/// A new HTTP stream (worker thread).
///
/// # Safety
/// `config_ptr` is ours (config-new); `filter_envoy_ptr` is Envoy's live filter.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_ptr: *const c_void,
    filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    if config_ptr.is_null() {
        return std::ptr::null();
    }
    // SAFETY: a FilterConfig we boxed in config_new; Envoy keeps it alive while filters exist.
    let config = unsafe { &*config_ptr.cast::<crate::hooks::FilterConfig>() };
    let handle = FilterHandle(filter_envoy_ptr);
    guard(
        "http_filter_new",
        || {
            Box::into_raw(Box::new(crate::hooks::filter_new(config, handle)))
                .cast_const()
                .cast()
        },
        std::ptr::null,
    )
}

/// # Safety
/// Envoy's hook contract (live filter, our filter pointer).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    end_of_stream: bool,
) -> u32 {
    let handle = FilterHandle(filter_envoy_ptr);
    // SAFETY: our filter pointer, live until destroy.
    let stream = unsafe { stream(filter_module_ptr) };
    guard(
        "request_headers",
        || crate::hooks::request_headers(stream, end_of_stream),
        || {
            crate::hooks::internal_error(handle);
            HEADERS_STOP_ITERATION
        },
    )
}

/// # Safety
/// Envoy's hook contract (live filter, our filter pointer).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    end_of_stream: bool,
) -> u32 {
    let handle = FilterHandle(filter_envoy_ptr);
    // SAFETY: our filter pointer, live until destroy.
    let stream = unsafe { stream(filter_module_ptr) };
    guard(
        "request_body",
        || crate::hooks::request_body(stream, end_of_stream),
        || {
            crate::hooks::internal_error(handle);
            BODY_STOP_AND_BUFFER
        },
    )
}

/// # Safety
/// Envoy's hook contract (live filter, our filter pointer).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
) -> u32 {
    let handle = FilterHandle(filter_envoy_ptr);
    // SAFETY: our filter pointer, live until destroy.
    let stream = unsafe { stream(filter_module_ptr) };
    guard(
        "request_trailers",
        || crate::hooks::request_trailers(stream),
        || {
            crate::hooks::internal_error(handle);
            TRAILERS_STOP
        },
    )
}

/// The response passes untouched.
///
/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    HEADERS_CONTINUE
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    BODY_CONTINUE
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) -> u32 {
    TRAILERS_CONTINUE
}

/// May run while another hook of the same filter is on the stack (abi.h): does nothing; the
/// state goes in the destroy hook.
///
/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) {
}

/// # Safety
/// `filter_module_ptr` is ours, destroyed exactly once (abi.h), never during another hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(
    filter_module_ptr: *const c_void,
) {
    if filter_module_ptr.is_null() {
        return;
    }
    // SAFETY: created by Box::into_raw in filter_new; destroyed exactly once.
    let stream = unsafe {
        Box::from_raw(
            filter_module_ptr
                .cast_mut()
                .cast::<crate::hooks::StreamFilter>(),
        )
    };
    guard(
        "http_filter_destroy",
        || crate::hooks::filter_destroy(*stream),
        || (),
    );
}

/// # Safety
/// Envoy's hook contract: live filter, our pointer, `headers`/`body_chunks` arrays of the given
/// sizes (or null) valid during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    callout_id: u64,
    result: CalloutResult,
    headers: *const RawHeader,
    headers_size: usize,
    body_chunks: *const RawBuffer,
    body_chunks_size: usize,
) {
    let handle = FilterHandle(filter_envoy_ptr);
    // SAFETY: our filter pointer, live until destroy.
    let stream = unsafe { stream(filter_module_ptr) };
    let mut answer = CalloutAnswer {
        status: None,
        body: Vec::new(),
    };
    if result == CALLOUT_RESULT_SUCCESS {
        if !headers.is_null() {
            // SAFETY: Envoy's array of `headers_size` headers, valid during this hook.
            let headers = unsafe { std::slice::from_raw_parts(headers, headers_size) };
            for h in headers {
                // SAFETY: buffers inside Envoy's response, valid during this hook.
                let key = unsafe {
                    RawBuffer {
                        ptr: h.key_ptr,
                        length: h.key_length,
                    }
                    .as_slice()
                };
                if key == b":status" {
                    // SAFETY: as above.
                    let value = unsafe {
                        RawBuffer {
                            ptr: h.value_ptr,
                            length: h.value_length,
                        }
                        .as_slice()
                    };
                    answer.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
                }
            }
        }
        if !body_chunks.is_null() {
            // SAFETY: Envoy's array of `body_chunks_size` buffers, valid during this hook.
            let chunks = unsafe { std::slice::from_raw_parts(body_chunks, body_chunks_size) };
            for chunk in chunks {
                // SAFETY: as above.
                answer.body.extend_from_slice(unsafe { chunk.as_slice() });
            }
        }
    }
    guard(
        "http_callout_done",
        || crate::hooks::callout_done(stream, callout_id, answer),
        || crate::hooks::internal_error(handle),
    )
}

/// An event committed through a filter's [`Scheduler`], on its worker thread.
///
/// # Safety
/// Envoy's hook contract (live filter, our filter pointer).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    event_id: u64,
) {
    let handle = FilterHandle(filter_envoy_ptr);
    // SAFETY: our filter pointer, live until destroy.
    let stream = unsafe { stream(filter_module_ptr) };
    guard(
        "http_filter_scheduled",
        || crate::hooks::scheduled(stream, event_id),
        || crate::hooks::internal_error(handle),
    )
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy_ptr: *mut c_void,
    _config_ptr: *const c_void,
    _event_id: u64,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _response_code: u32,
    _details: RawBuffer,
    _reset_imminent: bool,
) -> u32 {
    0 // Continue: send the local reply.
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) {
}

// Hooks for features this module does not use (streamed callouts, callouts of a configuration).
// Envoy resolves them when it loads a configuration, so they exist and do nothing.

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _headers: *const RawHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _data: *const RawBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _trailers: *const RawHeader,
    _trailers_size: usize,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy_ptr: *mut c_void,
    _config_ptr: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const RawHeader,
    _headers_size: usize,
    _body_chunks: *const RawBuffer,
    _body_chunks_size: usize,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy_ptr: *mut c_void,
    _config_ptr: *const c_void,
    _stream_id: u64,
    _headers: *const RawHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy_ptr: *mut c_void,
    _config_ptr: *const c_void,
    _stream_id: u64,
    _data: *const RawBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy_ptr: *mut c_void,
    _config_ptr: *const c_void,
    _stream_id: u64,
    _trailers: *const RawHeader,
    _trailers_size: usize,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy_ptr: *mut c_void,
    _config_ptr: *const c_void,
    _stream_id: u64,
) {
}

/// # Safety
/// No pointer is used.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy_ptr: *mut c_void,
    _config_ptr: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}
