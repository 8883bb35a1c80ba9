//! An input truncated under a run becomes a one-line error instead of a crash.
//!
//! Inputs are read through memory maps. When another process truncates a mapped file, reading
//! the pages it lost raises SIGBUS, which kills the process and leaves its temporary output
//! behind. Two ways out were weighed:
//! - reads that cannot fault (`pread` into buffers): the merge engine and the generation loader
//!   read tensors as zero-copy slices of the maps, from several threads; every reader would
//!   change, and the copies would cost memory bandwidth on every run for a rare event;
//! - a handler that jumps back (`sigsetjmp`/`siglongjmp`): jumping out of a signal handler across
//!   Rust frames skips their destructors and is undefined behaviour.
//!
//! So the handler ends the run instead, cleanly: [`install`] (called by the application; the
//! library installs nothing by itself) sets a SIGBUS handler that checks the faulting address
//! lies in a registered input map ([`MapGuard`]), writes the one line prepared for that file,
//! removes the registered temporary outputs ([`OutputGuard`]) with async-signal-safe system calls
//! only, and ends the process with `_exit(1)`. A fault anywhere else gets the default action, as
//! Rust's own handler does. The registries are fixed arrays of atomics: the handler takes no lock
//! and allocates nothing.

use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Input maps watched at once; maps beyond this many still work, unwatched.
const MAP_SLOTS: usize = 1024;
/// Temporary outputs removed at once.
const OUTPUT_SLOTS: usize = 64;

struct MapSlot {
    start: AtomicUsize,
    len: AtomicUsize,
    message: AtomicPtr<u8>,
    message_len: AtomicUsize,
}

struct OutputSlot {
    /// A NUL-terminated path; null when free.
    path: AtomicPtr<u8>,
    /// 1 for a directory (its files are removed, then it), 2 for a file.
    kind: AtomicUsize,
}

static MAPS: [MapSlot; MAP_SLOTS] = [const {
    MapSlot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        message: AtomicPtr::new(std::ptr::null_mut()),
        message_len: AtomicUsize::new(0),
    }
}; MAP_SLOTS];

static OUTPUTS: [OutputSlot; OUTPUT_SLOTS] =
    [const { OutputSlot { path: AtomicPtr::new(std::ptr::null_mut()), kind: AtomicUsize::new(0) } }; OUTPUT_SLOTS];

/// Keeps a map registered while alive.
#[derive(Debug)]
pub struct MapGuard(Option<usize>);

/// Registers the map of `path` at `start..start + len`, with the line the handler writes if a
/// read there faults. The line is kept for the life of the process (a few hundred bytes a file):
/// the handler may be reading it while the guard drops.
pub fn guard_map(start: *const u8, len: usize, path: &Path) -> MapGuard {
    if len == 0 {
        return MapGuard(None);
    }
    let line = format!(
        "error: {}: the file was truncated or changed while it was read; stopped, and no output was written\n",
        path.display().to_string().escape_debug()
    );
    let line: &'static mut [u8] = Box::leak(line.into_bytes().into_boxed_slice());
    for (i, slot) in MAPS.iter().enumerate() {
        if slot.start.compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            slot.len.store(len, Ordering::Release);
            slot.message_len.store(line.len(), Ordering::Release);
            slot.message.store(line.as_mut_ptr(), Ordering::Release);
            slot.start.store(start as usize, Ordering::Release);
            return MapGuard(Some(i));
        }
    }
    MapGuard(None)
}

impl Drop for MapGuard {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            MAPS[i].start.store(0, Ordering::Release);
        }
    }
}

/// Keeps a temporary output registered for removal while alive.
#[derive(Debug)]
pub struct OutputGuard(Option<usize>);

/// Registers the temporary output `path` (a directory of files, or one file) for the handler
/// to remove. Drop the guard once the output is committed or removed.
pub fn guard_output(path: &Path, is_dir: bool) -> OutputGuard {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return OutputGuard(None) };
    let raw = c.into_raw().cast::<u8>();
    for (i, slot) in OUTPUTS.iter().enumerate() {
        if slot.path.compare_exchange(std::ptr::null_mut(), raw, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            slot.kind.store(if is_dir { 1 } else { 2 }, Ordering::Release);
            return OutputGuard(Some(i));
        }
    }
    // SAFETY: `raw` came from `CString::into_raw` above and was not stored anywhere.
    drop(unsafe { std::ffi::CString::from_raw(raw.cast()) });
    OutputGuard(None)
}

impl Drop for OutputGuard {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            OUTPUTS[i].kind.store(0, Ordering::Release);
            // The path string is leaked rather than freed: the handler may be reading it.
            OUTPUTS[i].path.store(std::ptr::null_mut(), Ordering::Release);
        }
    }
}

/// Installs the SIGBUS handler (once; later calls do nothing). For applications: a library
/// that maps files should leave signals to the program.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    #[cfg(target_os = "linux")]
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a valid handler and mask is what sigaction expects;
        // the handler only calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    });
    #[cfg(not(target_os = "linux"))]
    ONCE.call_once(|| {});
}

#[cfg(target_os = "linux")]
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in MAPS.iter() {
        let start = slot.start.load(Ordering::Acquire);
        if start == 0 || start == usize::MAX || addr < start || addr - start >= slot.len.load(Ordering::Acquire) {
            continue;
        }
        let (message, len) = (slot.message.load(Ordering::Acquire), slot.message_len.load(Ordering::Acquire));
        // SAFETY: write(2), unlink(2), rmdir(2), getdents64(2), close(2) and _exit(2) are
        // async-signal-safe; `message` is a leaked, never-freed buffer of `len` bytes.
        unsafe {
            libc::write(2, message.cast(), len);
            remove_outputs();
            libc::_exit(1);
        }
    }
    // Not an input map: the default action, taken when the faulting read runs again.
    // SAFETY: signal(2) is async-signal-safe.
    unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
}

/// Removes every registered temporary output, with system calls only.
#[cfg(target_os = "linux")]
unsafe fn remove_outputs() {
    for slot in OUTPUTS.iter() {
        let path = slot.path.load(Ordering::Acquire);
        if path.is_null() {
            continue;
        }
        match slot.kind.load(Ordering::Acquire) {
            1 => {
                // Twice: removing entries while listing them may hide some from the first pass.
                remove_files_in(path.cast());
                remove_files_in(path.cast());
                libc::rmdir(path.cast());
            }
            2 => {
                libc::unlink(path.cast());
            }
            _ => {}
        }
    }
}

/// Unlinks the files of the directory `dir` (a temporary output holds no subdirectories).
#[cfg(target_os = "linux")]
unsafe fn remove_files_in(dir: *const libc::c_char) {
    let fd = libc::open(dir, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 2048];
    loop {
        let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off + 19 < n as usize {
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = buf.as_ptr().add(off + 19).cast::<libc::c_char>();
            let dot = *name == b'.' as libc::c_char;
            let dots = dot && (*name.add(1) == 0 || (*name.add(1) == b'.' as libc::c_char && *name.add(2) == 0));
            if !dots {
                libc::unlinkat(fd, name, 0);
            }
            off += reclen;
        }
    }
    libc::close(fd);
}
