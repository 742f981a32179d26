//! The named shared mapping: a file under `/dev/shm`, mapped with `mmap`.
//!
//! The file is created with `O_CREAT | O_EXCL` (so `create` never touches an
//! existing channel), sized with `ftruncate` (tmpfs gives zeroed pages), mapped
//! `MAP_SHARED` read-write, then its header is filled in; the magic word is stored
//! last (Release), so an attacher that sees the magic sees the whole header.
//! This is what `shm_open` does on Linux, written with `std::fs` plus `rustix::mm`
//! so that the path is explicit.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::mm::{MapFlags, ProtFlags};

use crate::error::OpenError;
use crate::layout::{HEADER_BYTES, Layout, MAGIC, RECORD_ALIGN, VERSION, field};
use crate::ring::Region;

/// Where channel files live.
pub const SHM_DIR: &str = "/dev/shm";
/// The longest channel name accepted.
pub const MAX_NAME_LEN: usize = 200;
/// How long an attacher waits for a creator to finish initialising the header.
const INIT_WAIT: Duration = Duration::from_secs(1);

/// Checks that `name` is a plain file name: 1 to [`MAX_NAME_LEN`] bytes of
/// `[A-Za-z0-9._-]`, not starting with a dot.
pub fn validate_name(name: &str) -> Result<(), OpenError> {
    let invalid = |reason| {
        Err(OpenError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("longer than 200 bytes");
    }
    if name.starts_with('.') {
        return invalid("starts with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// The file of channel `name`.
pub fn channel_path(name: &str) -> Result<PathBuf, OpenError> {
    validate_name(name)?;
    Ok(PathBuf::from(SHM_DIR).join(name))
}

fn io_error<'a>(op: &'static str, name: &'a str) -> impl FnOnce(std::io::Error) -> OpenError + 'a {
    move |source| OpenError::Io {
        op,
        name: name.to_owned(),
        source,
    }
}

/// A mapped channel file.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    layout: Layout,
    file: File,
    name: String,
}

// SAFETY: the mapping is plain shared memory; every access to it goes through
// atomics or through byte copies whose exclusivity the ring protocol guarantees.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out atomics and protocol-owned bytes.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates channel `name`; fails with `AlreadyExists` if any file of that name
    /// exists.
    pub(crate) fn create(name: &str, layout: Layout) -> Result<Self, OpenError> {
        layout.validate()?;
        let path = channel_path(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => OpenError::AlreadyExists {
                    name: name.to_owned(),
                },
                _ => io_error("create", name)(e),
            })?;
        let made = (|| {
            file.set_len(layout.mapping_len())
                .map_err(io_error("ftruncate", name))?;
            let mapping = Self::map(
                file.try_clone().map_err(io_error("dup", name))?,
                name,
                layout,
            )?;
            let set = |i: usize, v: u64| mapping.field(i).store(v, Ordering::Relaxed);
            set(field::VERSION, VERSION);
            set(field::HEADER_BYTES, HEADER_BYTES as u64);
            set(field::RING_SIZE, layout.ring_size);
            set(field::MAX_MESSAGE, u64::from(layout.max_message));
            set(field::RECORD_ALIGN, RECORD_ALIGN);
            mapping.field(field::MAGIC).store(MAGIC, Ordering::Release);
            Ok(mapping)
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        made
    }

    /// Attaches to an existing channel, checking magic, version and layout
    /// (`expected`, when given).
    pub(crate) fn open(name: &str, expected: Option<Layout>) -> Result<Self, OpenError> {
        let path = channel_path(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => OpenError::NotFound {
                    name: name.to_owned(),
                },
                _ => io_error("open", name)(e),
            })?;
        // Wait (bounded) for a concurrent creator to size and stamp the file.
        let deadline = Instant::now() + INIT_WAIT;
        let header = loop {
            let size = file.metadata().map_err(io_error("fstat", name))?.len();
            if size >= HEADER_BYTES as u64 {
                let probe = Self::map_raw(&file, name, HEADER_BYTES)?;
                let magic = probe.word(field::MAGIC).load(Ordering::Acquire);
                if magic != 0 {
                    if magic != MAGIC {
                        return Err(OpenError::BadMagic {
                            name: name.to_owned(),
                            found: magic,
                        });
                    }
                    break (probe, size);
                }
            }
            if Instant::now() >= deadline {
                return Err(OpenError::NotInitialized {
                    name: name.to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let (probe, size) = header;
        let read = |i: usize| probe.word(i).load(Ordering::Relaxed);
        let version = read(field::VERSION);
        if version != VERSION {
            return Err(OpenError::VersionMismatch {
                name: name.to_owned(),
                found: version,
                expected: VERSION,
            });
        }
        let corrupt = |reason| OpenError::CorruptHeader {
            name: name.to_owned(),
            reason,
        };
        if read(field::HEADER_BYTES) != HEADER_BYTES as u64
            || read(field::RECORD_ALIGN) != RECORD_ALIGN
        {
            return Err(corrupt("unexpected header size or record alignment"));
        }
        let found = Layout {
            ring_size: read(field::RING_SIZE),
            max_message: u32::try_from(read(field::MAX_MESSAGE))
                .map_err(|_| corrupt("max_message out of range"))?,
        };
        found
            .validate()
            .map_err(|_| corrupt("ring geometry out of bounds"))?;
        if size != found.mapping_len() {
            return Err(corrupt("file size does not match the ring size"));
        }
        if let Some(expected) = expected {
            if expected != found {
                return Err(OpenError::LayoutMismatch {
                    name: name.to_owned(),
                    expected,
                    found,
                });
            }
        }
        drop(probe);
        Self::map(file, name, found)
    }

    fn map(file: File, name: &str, layout: Layout) -> Result<Self, OpenError> {
        let len = usize::try_from(layout.mapping_len()).map_err(|_| OpenError::InvalidLayout {
            reason: "ring_size does not fit the address space",
        })?;
        let raw = Self::map_raw(&file, name, len)?;
        let base = raw.base;
        std::mem::forget(raw);
        Ok(Self {
            base,
            len,
            layout,
            file,
            name: name.to_owned(),
        })
    }

    fn map_raw(file: &File, name: &str, len: usize) -> Result<RawMap, OpenError> {
        // SAFETY: a fresh mapping at an address the kernel picks; it aliases no Rust
        // object. The file is at least `len` bytes long (checked or set by callers),
        // so no access within `len` faults.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                file,
                0,
            )
        }
        .map_err(|e| OpenError::Io {
            op: "mmap",
            name: name.to_owned(),
            source: e.into(),
        })?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(OpenError::Io {
            op: "mmap",
            name: name.to_owned(),
            source: std::io::Error::other("null mapping"),
        })?;
        Ok(RawMap { base, len })
    }

    /// The channel's layout.
    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// The channel's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The file descriptor (for the reader's lock).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The futex word.
    pub(crate) fn futex(&self) -> &AtomicU32 {
        // SAFETY: WAKE_SEQ is inside the header, 8-aligned (so 4-aligned), and the
        // mapping lives as long as `self`. The word is only ever accessed
        // atomically; the low half of the u64 word is used as the futex.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(field::WAKE_SEQ * 8)
                .cast::<AtomicU32>()
        }
    }

    /// The payload bytes at data-area offset `offset`.
    ///
    /// The caller is the reader and the bytes belong to a committed record below
    /// the tail that it has not consumed: no writer writes them.
    pub(crate) fn payload(&self, offset: u64, len: u64) -> &[u8] {
        debug_assert!(offset + len <= self.layout.ring_size);
        // SAFETY: `offset + len <= ring_size` (the reader checked the record against
        // the end of the data area), so the range is inside the mapping; per the
        // protocol no writer writes a committed record before the reader consumes it.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(HEADER_BYTES + offset as usize),
                len as usize,
            )
        }
    }

    #[inline]
    fn word(&self, byte: usize) -> &AtomicU64 {
        debug_assert!(byte % 8 == 0 && byte + 8 <= self.len);
        // SAFETY: in bounds and 8-aligned (the mapping is page aligned); shared
        // words are only accessed atomically while other parties may touch them.
        unsafe { &*self.base.as_ptr().add(byte).cast::<AtomicU64>() }
    }
}

impl Region for Mapping {
    #[inline]
    fn field(&self, index: usize) -> &AtomicU64 {
        self.word(index * 8)
    }

    #[inline]
    fn data_word(&self, offset: u64) -> &AtomicU64 {
        self.word(HEADER_BYTES + offset as usize)
    }

    #[inline]
    fn write_payload(&self, offset: u64, src: &[u8]) {
        assert!(offset + src.len() as u64 <= self.layout.ring_size);
        // SAFETY: in bounds (asserted); the writer owns these bytes through its
        // stamped claim, so nobody else reads or writes them until it commits.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.base.as_ptr().add(HEADER_BYTES + offset as usize),
                src.len(),
            );
        }
    }

    fn read_payload(&self, offset: u64, len: u64, dst: &mut Vec<u8>) {
        dst.extend_from_slice(self.payload(offset, len));
    }

    #[inline]
    fn fill(&self, offset: u64, len: u64, word: u64) {
        assert!(offset % 8 == 0 && len % 8 == 0 && offset + len <= self.layout.ring_size);
        let start = self
            .base
            .as_ptr()
            .wrapping_add(HEADER_BYTES + offset as usize);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as below; `rep stosq` stores `word` to the `len / 8` words from
        // `start` (the direction flag is clear on entry to any Rust code). The
        // block is not `nomem`, so the compiler keeps it before the Release store
        // that publishes the head, and x86 orders a string operation's stores
        // before every later store.
        unsafe {
            std::arch::asm!(
                "rep stosq",
                inout("rdi") start => _,
                inout("rcx") len / 8 => _,
                in("rax") word,
                options(nostack, preserves_flags)
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        for i in 0..(len / 8) as usize {
            // SAFETY: in bounds and 8-aligned (asserted; the data area is page
            // aligned); the reader owns consumed records until it publishes the head
            // past them, so no one else accesses these words meanwhile.
            unsafe { start.cast::<u64>().add(i).write(word) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are this object's own mapping, and no reference
        // into it outlives `self` (all borrows are tied to `&self`).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A mapping used only to read the header while attaching.
struct RawMap {
    base: NonNull<u8>,
    len: usize,
}

impl RawMap {
    fn word(&self, index: usize) -> &AtomicU64 {
        // SAFETY: header fields are in the first 4 KiB, which this mapping covers;
        // the base is page aligned.
        unsafe { &*self.base.as_ptr().add(index * 8).cast::<AtomicU64>() }
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the references handed out borrow `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Whether process `pid` is alive (exists and is not a zombie), read from
/// `/proc/<pid>/stat`. Used by the adapters to notice a peer killed without a word.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    match stat.rfind(')') {
        Some(end) => !matches!(stat[end + 1..].trim_start().chars().next(), Some('Z' | 'X')),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn fill_sets_exactly_the_words_asked_for() {
        let name = format!("atbus-fill-test-{}", std::process::id());
        let _ = crate::remove_force(&name);
        let map = Mapping::create(&name, Layout::default()).unwrap();
        let word = |offset: u64| map.data_word(offset).load(Ordering::Relaxed);
        let last = map.layout.ring_size - 8;
        for offset in [0, 8, 16, 24, 32, last - 8, last] {
            map.data_word(offset).store(u64::MAX, Ordering::Relaxed);
        }
        map.fill(16, 0, 7);
        assert_eq!(word(16), u64::MAX, "an empty fill writes nothing");
        map.fill(8, 16, 0x0123_4567_89ab_cdef);
        assert_eq!(
            [word(0), word(8), word(16), word(24)],
            [
                u64::MAX,
                0x0123_4567_89ab_cdef,
                0x0123_4567_89ab_cdef,
                u64::MAX
            ]
        );
        // Up to the end of the data area.
        map.fill(last - 8, 16, 3 << 3);
        assert_eq!([word(last - 8), word(last)], [3 << 3, 3 << 3]);
        assert_eq!(word(32), u64::MAX);
        drop(map);
        crate::remove_force(&name).unwrap();
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("atbus-1.node_a").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "a b", "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
