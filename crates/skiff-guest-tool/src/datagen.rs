//! Deterministic data generation.
//!
//! The byte stream used by `write-file` and `net-send` is SplitMix64 seeded with `--seed`
//! (default 0): the generator's successive 64-bit outputs, each written little-endian. A host
//! side test can reproduce it in a few lines:
//!
//! ```text
//! state = seed
//! loop: state += 0x9E3779B97F4A7C15
//!       z = state
//!       z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
//!       z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//!       emit_le64(z ^ (z >> 31))          (all arithmetic mod 2^64)
//! ```
//!
//! Because the stream is word-based, `write-file PATH N --seed S` and `net-send H P N --seed S`
//! produce exactly the same bytes, hence the same SHA-256.

/// Bytes in one page as the tool sees it (x86-64 base pages).
pub const PAGE_SIZE: usize = 4096;
/// 64-bit words per page.
pub const PAGE_WORDS: usize = PAGE_SIZE / 8;
/// Bytes in one MiB.
pub const MIB: u64 = 1 << 20;

/// The SplitMix64 generator (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64-bit output.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }
}

/// The SplitMix64 finaliser: a good 64-bit bijective mix.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Map a uniform 64-bit value onto `0..n` without division (Lemire's multiply-shift).
#[inline]
pub fn reduce(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Continue the deterministic byte stream into `buf`.
///
/// The stream stays continuous across calls as long as every buffer but the last has a length
/// that is a multiple of 8; a trailing partial word takes the low bytes of the next output.
pub fn fill_stream(rng: &mut SplitMix64, buf: &mut [u8]) {
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let word = rng.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&word[..n]);
    }
}

/// How pages are filled when memory is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageContent {
    /// Every page different (derived from a nonce and the page's index): not mergeable.
    Varied {
        /// Per-run value mixed into every page so two runs (or two guests) differ too.
        nonce: u64,
    },
    /// Every page identical (and non-zero): ideal for content-based page sharing.
    Same,
}

/// Fill one page (`PAGE_WORDS` words) with the content for page number `index`.
///
/// Every word is non-zero, so no page is ever a zero page.
#[inline]
pub fn fill_page(page: &mut [u64], index: u64, content: PageContent) {
    let seed = match content {
        PageContent::Varied { nonce } => mix(nonce ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        PageContent::Same => 0x5EED_5EED_5EED_5EED,
    };
    let mut rng = SplitMix64::new(seed);
    for w in page.iter_mut() {
        *w = rng.next_u64() | 1;
    }
}

/// Fill `words` (a whole number of pages) starting at page number `first_page`.
pub fn fill_pages(words: &mut [u64], first_page: u64, content: PageContent) {
    for (i, page) in words.chunks_mut(PAGE_WORDS).enumerate() {
        fill_page(page, first_page + i as u64, content);
    }
}

/// A nonce that differs between runs (time and pid), for `PageContent::Varied` without `--seed`.
pub fn run_nonce() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    mix(nanos ^ (u64::from(std::process::id()) << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_known_values() {
        // Reference outputs of SplitMix64 with seed 0.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn stream_is_deterministic_and_chunking_independent() {
        let mut a = vec![0u8; 4096];
        fill_stream(&mut SplitMix64::new(42), &mut a);
        let mut b = vec![0u8; 4096];
        let mut r = SplitMix64::new(42);
        for chunk in b.chunks_mut(512) {
            fill_stream(&mut r, chunk);
        }
        assert_eq!(a, b);
        let mut c = vec![0u8; 4096];
        fill_stream(&mut SplitMix64::new(43), &mut c);
        assert_ne!(a, c);
        assert_eq!(
            &a[..8],
            &mix(42u64.wrapping_add(0x9E37_79B9_7F4A_7C15)).to_le_bytes()
        );
    }

    #[test]
    fn partial_tail_takes_low_bytes() {
        let mut buf = [0u8; 11];
        fill_stream(&mut SplitMix64::new(0), &mut buf);
        let mut r = SplitMix64::new(0);
        let w0 = r.next_u64().to_le_bytes();
        let w1 = r.next_u64().to_le_bytes();
        assert_eq!(&buf[..8], &w0);
        assert_eq!(&buf[8..], &w1[..3]);
    }

    #[test]
    fn varied_pages_differ_same_pages_match() {
        let mut p = vec![0u64; PAGE_WORDS * 3];
        fill_pages(&mut p, 0, PageContent::Varied { nonce: 7 });
        assert_ne!(p[..PAGE_WORDS], p[PAGE_WORDS..2 * PAGE_WORDS]);
        assert!(p.iter().all(|&w| w != 0));
        let mut q = vec![0u64; PAGE_WORDS * 3];
        fill_pages(&mut q, 0, PageContent::Varied { nonce: 8 });
        assert_ne!(p, q);

        let mut s = vec![0u64; PAGE_WORDS * 3];
        fill_pages(&mut s, 5, PageContent::Same);
        assert_eq!(s[..PAGE_WORDS], s[PAGE_WORDS..2 * PAGE_WORDS]);
        assert_eq!(s[..PAGE_WORDS], s[2 * PAGE_WORDS..]);
        assert!(s.iter().all(|&w| w != 0));
    }

    #[test]
    fn reduce_stays_in_range() {
        let mut r = SplitMix64::new(1);
        for n in [1u64, 2, 3, 1000, u64::from(u32::MAX) + 7] {
            for _ in 0..1000 {
                assert!(reduce(r.next_u64(), n) < n);
            }
        }
        assert_eq!(reduce(u64::MAX, 10), 9);
        assert_eq!(reduce(0, 10), 0);
    }
}
