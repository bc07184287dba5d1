//! The partition table and superblock parser on arbitrary disks: no panic, every
//! partition returned within the disk, every filesystem returned within its partition.
//!
//! The GPT checksums are made to match before parsing (a hostile image would have
//! them right), so the fuzzer's numbers reach the bounds checks instead of stopping at
//! the checksum.

#![no_main]

use std::io::Cursor;

use imgforge::disk::partition::{partitions, probe_ext4};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut disk = data.to_vec();
    for sector in [512, 4096] {
        reseal(&mut disk, sector);
    }
    let size = disk.len() as u64;
    let Ok((_, parts)) = partitions(&mut Cursor::new(&disk), size) else {
        return;
    };
    for p in &parts {
        let end = p.offset.checked_add(p.size);
        assert!(end.is_some_and(|e| e <= size), "{p:?} past {size}");
        if let Ok(Some(fs)) = probe_ext4(&mut Cursor::new(&disk), p) {
            assert!((1024..=65536).contains(&fs.block_size), "{fs:?}");
            let bytes = u128::from(fs.blocks) * u128::from(fs.block_size);
            assert!(bytes <= u128::from(p.size), "{fs:?} in {p:?}");
        }
    }
});

/// Recomputes the checksums of a GPT header at LBA 1 of `sector` bytes, and of the
/// entries it locates when they lie within `disk`.
fn reseal(disk: &mut [u8], sector: usize) {
    let h = sector;
    if disk.len() < h + 92 || &disk[h..h + 8] != b"EFI PART" {
        return;
    }
    let le32 = |d: &[u8], i: usize| u32::from_le_bytes(d[i..i + 4].try_into().unwrap());
    let lba = u64::from_le_bytes(disk[h + 72..h + 80].try_into().unwrap());
    let bytes = le32(disk, h + 80) as usize * le32(disk, h + 84) as usize;
    let start = usize::try_from(lba)
        .ok()
        .and_then(|l| l.checked_mul(sector));
    if let Some((start, end)) = start.and_then(|s| Some((s, s.checked_add(bytes)?))) {
        if end <= disk.len() {
            let crc = crc32fast::hash(&disk[start..end]);
            disk[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let header_size = le32(disk, h + 12) as usize;
    if (92..=sector).contains(&header_size) && h + header_size <= disk.len() {
        disk[h + 16..h + 20].fill(0);
        let crc = crc32fast::hash(&disk[h..h + header_size]);
        disk[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
    }
}
