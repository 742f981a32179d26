//! Limits a decoder enforces on what a peer sends.

/// Default largest frame accepted: 256 KiB, above the 64 KiB MTU of Unix sockets and
/// the largest UDP datagram, with room for headers.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 256 * 1024;
/// Default largest number of fragments in one packet content.
pub const DEFAULT_MAX_FRAGMENTS: usize = 4096;
/// Default largest number of map entries (labels, attributes) in one decoded unit.
pub const DEFAULT_MAX_MAP_ENTRIES: usize = 256;

/// Bounds on what decoding a frame may hold in memory.
///
/// A frame larger than `max_frame_size` is rejected from its header alone, before
/// anything is buffered or allocated for it. Repeated fragments and map entries are
/// counted on the wire before they are decoded, so a small frame cannot expand into
/// a large structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest frame, header and checksum included, in bytes.
    pub max_frame_size: usize,
    /// Largest number of fragments in one `packet_content`.
    pub max_fragments: usize,
    /// Largest number of map entries (labels and attributes together) in one frame or
    /// one packet content.
    pub max_map_entries: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_fragments: DEFAULT_MAX_FRAGMENTS,
            max_map_entries: DEFAULT_MAX_MAP_ENTRIES,
        }
    }
}

impl DecodeLimits {
    /// The default limits with another maximum frame size.
    pub fn with_max_frame_size(max_frame_size: usize) -> Self {
        DecodeLimits {
            max_frame_size,
            ..Self::default()
        }
    }
}
