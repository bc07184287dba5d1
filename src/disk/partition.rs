//! Finding the root filesystem in a raw disk image: the partition table (GPT behind a
//! protective MBR, or a plain MBR, or none at all) and the ext2/3/4 superblocks in it.
//!
//! Everything here is read from an image that may be damaged or hostile: every number
//! taken from it is checked before it is used as an offset, a length or a count, and a
//! partition or filesystem that does not fit where it claims to be is an error. The
//! filesystem's size matters most: e2fsprogs is given only the partition's offset and
//! trusts the superblock's block count for the rest.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The label Ubuntu's cloud images give their root filesystem.
pub const ROOT_LABEL: &str = "cloudimg-rootfs";

/// The most GPT entries read (the usual table has 128).
const MAX_GPT_ENTRIES: u32 = 16384;
/// The largest GPT entry array read, in bytes (the usual one is 16 KiB).
const MAX_GPT_ARRAY_BYTES: u64 = 2 << 20;
/// The largest GPT entry; entries are 128 bytes times a power of two.
const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// ext2/3/4 block sizes are 1 KiB << s_log_block_size, at most 64 KiB.
const MAX_LOG_BLOCK_SIZE: u32 = 6;
/// MBR entries count in 512-byte sectors.
const MBR_SECTOR: u64 = 512;

/// A partition (or the whole disk, when it has no partition table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number; 0 for a whole-disk filesystem.
    pub number: u32,
    /// Byte offset of the partition in the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// GPT partition name (empty for MBR).
    pub name: String,
}

/// What the superblock of an ext2/3/4 filesystem says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Super {
    pub label: String,
    pub block_size: u64,
    pub blocks: u64,
    /// Last write time (seconds since the epoch), 0 when never written.
    pub write_time: u64,
}

impl Ext4Super {
    /// The filesystem's size in bytes. [`probe_ext4`] only returns filesystems that fit
    /// in their partition, so this does not saturate for those.
    pub fn bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size)
    }
}

/// A partition holding an ext2/3/4 filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFs {
    pub partition: Partition,
    pub fs: Ext4Super,
}

/// How the disk is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Gpt,
    Mbr,
    /// No partition table: the filesystem starts at byte 0.
    None,
}

/// Reads the partition table of a raw disk image. Damage that makes the table
/// unreadable is an error, and so is a partition that does not lie within the disk
/// (`disk_size` bytes) or overlaps the table itself; a disk with no table at all gives
/// one whole-disk entry. Every partition returned lies within the disk.
pub fn partitions(
    disk: &mut (impl Read + Seek),
    disk_size: u64,
) -> Result<(Table, Vec<Partition>)> {
    let mut mbr = [0u8; 512];
    if !read_at(disk, 0, &mut mbr)? || mbr[510..512] != [0x55, 0xAA] {
        return Ok((Table::None, whole_disk(disk_size)));
    }
    let entries: Vec<[u8; 16]> = (0..4)
        .map(|i| {
            let mut e = [0u8; 16];
            e.copy_from_slice(&mbr[446 + i * 16..462 + i * 16]);
            e
        })
        .collect();
    if entries.iter().any(|e| e[4] == 0xEE) {
        for sector in [512u64, 4096] {
            if let Some(parts) = gpt(disk, sector, disk_size)? {
                return Ok((Table::Gpt, parts));
            }
        }
        bail!("the protective MBR announces a GPT, but no valid GPT header is at LBA 1");
    }
    let sectors = disk_size / MBR_SECTOR;
    let mut parts = Vec::new();
    for (i, e) in (1u32..).zip(&entries) {
        let kind = e[4];
        let start = u64::from(u32_le(&e[8..12]));
        let count = u64::from(u32_le(&e[12..16]));
        // Empty slots and extended partitions (logical ones are not followed).
        if kind == 0 || count == 0 || matches!(kind, 0x05 | 0x0F | 0x85) {
            continue;
        }
        if start == 0 {
            bail!("MBR partition {i} starts at sector 0, over the partition table");
        }
        // Both are below 2^32: neither the sum nor the products overflow.
        let last = start + count - 1;
        if last >= sectors {
            bail!("MBR partition {i} ends at sector {last}, beyond the disk's {sectors} sectors");
        }
        parts.push(Partition {
            number: i,
            offset: start * MBR_SECTOR,
            size: count * MBR_SECTOR,
            name: String::new(),
        });
    }
    if parts.is_empty() {
        // A boot sector signature with no partitions: a filesystem on the whole disk
        // (ext4 leaves the first 1024 bytes alone, so this is only a guess to probe).
        return Ok((Table::None, whole_disk(disk_size)));
    }
    Ok((Table::Mbr, parts))
}

fn whole_disk(disk_size: u64) -> Vec<Partition> {
    vec![Partition {
        number: 0,
        offset: 0,
        size: disk_size,
        name: String::new(),
    }]
}

/// The GPT with `sector`-byte logical blocks, if its header checks out.
fn gpt(
    disk: &mut (impl Read + Seek),
    sector: u64,
    disk_size: u64,
) -> Result<Option<Vec<Partition>>> {
    // `sector` is 512 or 4096: the casts and products on it below cannot overflow.
    let sectors = disk_size / sector;
    let mut header = vec![0u8; sector as usize];
    if !read_at(disk, sector, &mut header)? || &header[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let header_size = u32_le(&header[12..16]);
    if !(92..=sector).contains(&u64::from(header_size)) {
        bail!("GPT header size {header_size} is out of range (92 to {sector} bytes)");
    }
    let mut check = header[..header_size as usize].to_vec();
    check[16..20].fill(0);
    if crc32fast::hash(&check) != u32_le(&header[16..20]) {
        bail!("the GPT header checksum does not match: the partition table is damaged");
    }
    let entries_lba = u64_le(&header[72..80]);
    let count = u32_le(&header[80..84]);
    let entry_size = u32_le(&header[84..88]);
    if !(128..=MAX_GPT_ENTRY_SIZE).contains(&entry_size) || !entry_size.is_power_of_two() {
        bail!(
            "GPT entries of {entry_size} bytes: not a table this tool reads (entries are 128 bytes times a power of two, at most {MAX_GPT_ENTRY_SIZE})"
        );
    }
    if count > MAX_GPT_ENTRIES {
        bail!(
            "GPT declares {count} entries: not a table this tool reads (at most {MAX_GPT_ENTRIES})"
        );
    }
    // At most 2^14 entries of 2^12 bytes: no overflow.
    let table_bytes = u64::from(count) * u64::from(entry_size);
    if table_bytes > MAX_GPT_ARRAY_BYTES {
        bail!(
            "GPT declares {count} entries of {entry_size} bytes ({table_bytes} bytes): more than the {MAX_GPT_ARRAY_BYTES} bytes this tool reads"
        );
    }
    let table_sectors = table_bytes.div_ceil(sector);
    if entries_lba < 2 {
        bail!("the GPT partition entries at LBA {entries_lba} overlap the MBR or the GPT header");
    }
    let entries_end = entries_lba
        .checked_add(table_sectors)
        .filter(|&end| end <= sectors)
        .with_context(|| {
            format!(
                "the GPT partition entries at LBA {entries_lba} ({table_sectors} sectors) lie past the end of the disk's {sectors} sectors"
            )
        })?;
    let mut table = vec![0u8; table_bytes as usize];
    if !read_at(disk, entries_lba * sector, &mut table)? {
        bail!("the GPT partition entries at LBA {entries_lba} lie past the end of the disk");
    }
    if crc32fast::hash(&table) != u32_le(&header[88..92]) {
        bail!("the GPT partition entries checksum does not match: the table is damaged");
    }
    let mut parts = Vec::new();
    for (i, e) in (1u32..).zip(table.chunks_exact(entry_size as usize)) {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = u64_le(&e[32..40]);
        let last = u64_le(&e[40..48]);
        if last < first {
            bail!("GPT partition {i} ends at sector {last}, before its first sector {first}");
        }
        if last >= sectors {
            bail!("GPT partition {i} ends at sector {last}, beyond the disk's {sectors} sectors");
        }
        if first < 2 || (first < entries_end && last >= entries_lba) {
            bail!(
                "GPT partition {i} (sectors {first} to {last}) overlaps the partition table (sectors 0 and 1, and {entries_lba} to {})",
                entries_end - 1
            );
        }
        // last < sectors = disk_size / sector: neither product overflows.
        let offset = first * sector;
        let size = (last - first + 1) * sector;
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        parts.push(Partition {
            number: i,
            offset,
            size,
            name: String::from_utf16_lossy(&name),
        });
    }
    Ok(Some(parts))
}

/// The ext2/3/4 superblock at the start of `part`, if there is one. A superblock whose
/// block size is out of range, or whose filesystem would not fit in `part`, is an error:
/// e2fsprogs would read and write past the partition's end.
pub fn probe_ext4(disk: &mut (impl Read + Seek), part: &Partition) -> Result<Option<Ext4Super>> {
    if part.size < 2048 {
        return Ok(None);
    }
    let mut sb = [0u8; 1024];
    let Some(at) = part.offset.checked_add(1024) else {
        return Ok(None);
    };
    if !read_at(disk, at, &mut sb)? {
        return Ok(None);
    }
    if u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return Ok(None);
    }
    let log = u32_le(&sb[24..28]);
    if log > MAX_LOG_BLOCK_SIZE {
        bail!(
            "the ext4 superblock gives a block size of 2^(10+{log}) bytes: ext4 blocks are 1 KiB to 64 KiB"
        );
    }
    let block_size = 1024u64 << log;
    let incompat = u32_le(&sb[96..100]);
    let mut blocks = u64::from(u32_le(&sb[4..8]));
    if incompat & 0x80 != 0 {
        blocks |= u64::from(u32_le(&sb[0x150..0x154])) << 32;
    }
    if blocks == 0 {
        bail!("the ext4 superblock gives the filesystem 0 blocks");
    }
    let bytes = u128::from(blocks) * u128::from(block_size);
    if bytes > u128::from(part.size) {
        bail!(
            "the ext4 filesystem is {blocks} blocks of {block_size} bytes ({bytes} bytes), larger than the {} bytes it lies in",
            part.size
        );
    }
    let write_time = u64::from(u32_le(&sb[48..52])) | (u64::from(sb[0x274]) << 32);
    let label_bytes = &sb[120..136];
    let end = label_bytes.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(Some(Ext4Super {
        label: String::from_utf8_lossy(&label_bytes[..end]).into_owned(),
        block_size,
        blocks,
        write_time,
    }))
}

/// The root filesystem of a raw disk image: the ext4 partition labelled
/// `cloudimg-rootfs`, else the largest ext4 partition. `None` when there is none.
/// Errors about the table and the filesystems name the partition, not the file: the
/// caller knows what the user calls it.
pub fn find_root(raw: &Path) -> Result<(Table, Option<RootFs>)> {
    let mut file =
        File::open(raw).with_context(|| format!("opening disk image {}", raw.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("reading the size of {}", raw.display()))?
        .len();
    let (table, parts) = partitions(&mut file, size).context("reading the partition table")?;
    let mut found = Vec::new();
    for part in parts {
        if let Some(fs) = probe_ext4(&mut file, &part).with_context(|| match part.number {
            0 => "reading the filesystem on the whole disk".to_string(),
            n => format!("reading partition {n}"),
        })? {
            found.push(RootFs {
                partition: part,
                fs,
            });
        }
    }
    let labelled = found.iter().position(|r| r.fs.label == ROOT_LABEL);
    let pick = labelled.or_else(|| {
        found
            .iter()
            .enumerate()
            .max_by_key(|(_, r)| r.fs.bytes())
            .map(|(i, _)| i)
    });
    Ok((table, pick.map(|i| found.swap_remove(i))))
}

/// Reads exactly `buf.len()` bytes at `offset`; false when the disk is shorter.
fn read_at(disk: &mut (impl Read + Seek), offset: u64, buf: &mut [u8]) -> Result<bool> {
    disk.seek(SeekFrom::Start(offset))
        .context("seeking in the disk image")?;
    match disk.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e).context("reading the disk image"),
    }
}

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn u64_le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    const SECTOR: usize = 512;

    /// An in-memory GPT disk with partitions given as (first LBA, last LBA, name).
    fn gpt_disk(sectors: usize, parts: &[(u64, u64, &str)]) -> Vec<u8> {
        gpt_disk_sized(SECTOR, sectors, parts)
    }

    /// A GPT disk of `sectors` logical blocks of `sector` bytes: the header at LBA 1,
    /// 128 entries of 128 bytes from LBA 2.
    fn gpt_disk_sized(sector: usize, sectors: usize, parts: &[(u64, u64, &str)]) -> Vec<u8> {
        let mut disk = vec![0u8; sectors * sector];
        // Protective MBR.
        disk[446 + 4] = 0xEE;
        disk[510] = 0x55;
        disk[511] = 0xAA;
        for (i, (first, last, name)) in parts.iter().enumerate() {
            let e = &mut disk[2 * sector + i * 128..2 * sector + (i + 1) * 128];
            e[0] = 0xAF; // any non-zero type GUID
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, c) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
            }
        }
        let h = &mut disk[sector..2 * sector];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        reseal(&mut disk, sector);
        disk
    }

    /// Recomputes the GPT checksums after the header or entries were changed: the
    /// entries' when the header's (possibly hostile) numbers still locate them in
    /// `disk`, then the header's when its size is sane.
    fn reseal(disk: &mut [u8], sector: usize) {
        if disk.len() < 2 * sector {
            return;
        }
        let h = sector;
        let lba = u64::from_le_bytes(disk[h + 72..h + 80].try_into().unwrap());
        let count = u32::from_le_bytes(disk[h + 80..h + 84].try_into().unwrap()) as usize;
        let size = u32::from_le_bytes(disk[h + 84..h + 88].try_into().unwrap()) as usize;
        let start = usize::try_from(lba)
            .ok()
            .and_then(|l| l.checked_mul(sector));
        let end = count
            .checked_mul(size)
            .filter(|&n| n <= 64 << 20)
            .and_then(|n| start?.checked_add(n));
        if let (Some(start), Some(end)) = (start, end) {
            if end <= disk.len() {
                let crc = crc32fast::hash(&disk[start..end]);
                disk[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let header_size = u32::from_le_bytes(disk[h + 12..h + 16].try_into().unwrap()) as usize;
        if (92..=sector).contains(&header_size) {
            disk[h + 16..h + 20].fill(0);
            let crc = crc32fast::hash(&disk[h..h + header_size]);
            disk[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
        }
    }

    /// Overwrites the little-endian field of `width` bytes at `at` with `value`.
    fn put(disk: &mut [u8], at: usize, width: usize, value: u64) {
        disk[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
    }

    /// Sets an MBR slot.
    fn mbr_entry(disk: &mut [u8], slot: usize, kind: u8, start: u32, len: u32) {
        let e = &mut disk[446 + slot * 16..462 + slot * 16];
        e[4] = kind;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&len.to_le_bytes());
    }

    fn table_error(disk: &[u8]) -> String {
        match partitions(&mut Cursor::new(disk), disk.len() as u64) {
            Ok(parts) => panic!("a hostile table was accepted: {parts:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn put_ext4(disk: &mut [u8], offset: usize, label: &str, blocks: u32) {
        let sb = &mut disk[offset + 1024..offset + 2048];
        sb[4..8].copy_from_slice(&blocks.to_le_bytes());
        sb[24..28].copy_from_slice(&2u32.to_le_bytes());
        sb[48..52].copy_from_slice(&1_700_000_000u32.to_le_bytes());
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[120..120 + label.len()].copy_from_slice(label.as_bytes());
    }

    #[test]
    fn gpt_entries_are_read_with_names_and_offsets() {
        let disk = gpt_disk(200, &[(40, 99, "efi"), (100, 189, "cloudimg-rootfs")]);
        let (table, parts) = partitions(&mut Cursor::new(&disk), disk.len() as u64).unwrap();
        assert_eq!(table, Table::Gpt);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].number, 2);
        assert_eq!(parts[1].offset, 100 * 512);
        assert_eq!(parts[1].size, 90 * 512);
        assert_eq!(parts[1].name, "cloudimg-rootfs");
    }

    #[test]
    fn a_corrupted_gpt_header_is_an_error_not_an_empty_disk() {
        let mut disk = gpt_disk(200, &[(40, 99, "root")]);
        disk[SECTOR + 40] ^= 1;
        let err = partitions(&mut Cursor::new(&disk), disk.len() as u64).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        let mut disk = gpt_disk(200, &[(40, 99, "root")]);
        disk[2 * SECTOR + 33] ^= 1;
        let err = partitions(&mut Cursor::new(&disk), disk.len() as u64).unwrap_err();
        assert!(err.to_string().contains("entries"), "{err}");
    }

    #[test]
    fn the_labelled_root_wins_over_a_larger_ext4() {
        let mut disk = gpt_disk(400, &[(40, 99, "a"), (100, 149, "b"), (150, 399, "c")]);
        // 4 KiB blocks: 7 fit in partition a's 60 sectors, 31 in c's 250.
        put_ext4(&mut disk, 40 * SECTOR, ROOT_LABEL, 7);
        put_ext4(&mut disk, 150 * SECTOR, "data", 31);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        std::fs::write(&path, &disk).unwrap();
        let (_, root) = find_root(&path).unwrap();
        let root = root.unwrap();
        assert_eq!(root.partition.number, 1);
        assert_eq!(root.fs.label, ROOT_LABEL);
        assert_eq!(root.fs.block_size, 4096);
        assert_eq!(root.fs.write_time, 1_700_000_000);

        // Without the label, the largest filesystem is the root.
        disk[40 * SECTOR + 1024 + 120..40 * SECTOR + 1024 + 136].fill(0);
        std::fs::write(&path, &disk).unwrap();
        let (_, root) = find_root(&path).unwrap();
        assert_eq!(root.unwrap().partition.number, 3);
    }

    #[test]
    fn plain_mbr_partitions_are_read_and_extended_ones_skipped() {
        let mut disk = vec![0u8; 300 * SECTOR];
        disk[510] = 0x55;
        disk[511] = 0xAA;
        mbr_entry(&mut disk, 0, 0x83, 10, 100);
        mbr_entry(&mut disk, 1, 0x05, 110, 100);
        put_ext4(&mut disk, 10 * SECTOR, "root", 12);
        let (table, parts) = partitions(&mut Cursor::new(&disk), disk.len() as u64).unwrap();
        assert_eq!(table, Table::Mbr);
        assert_eq!(parts.len(), 1);
        let fs = probe_ext4(&mut Cursor::new(&disk), &parts[0])
            .unwrap()
            .unwrap();
        assert_eq!(fs.label, "root");
    }

    #[test]
    fn no_table_means_the_whole_disk_is_probed() {
        let mut disk = vec![0u8; 64 * SECTOR];
        put_ext4(&mut disk, 0, "whole", 8);
        let (table, parts) = partitions(&mut Cursor::new(&disk), disk.len() as u64).unwrap();
        assert_eq!(table, Table::None);
        let fs = probe_ext4(&mut Cursor::new(&disk), &parts[0])
            .unwrap()
            .unwrap();
        assert_eq!(fs.label, "whole");
        // Zeros everywhere: no filesystem.
        let zeros = vec![0u8; 64 * SECTOR];
        assert!(probe_ext4(&mut Cursor::new(&zeros), &parts[0])
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_4k_sector_gpt_is_read() {
        let disk = gpt_disk_sized(4096, 64, &[(6, 63, "cloudimg-rootfs")]);
        let (table, parts) = partitions(&mut Cursor::new(&disk), disk.len() as u64).unwrap();
        assert_eq!(table, Table::Gpt);
        assert_eq!(parts[0].offset, 6 * 4096);
        assert_eq!(parts[0].size, 58 * 4096);
    }

    #[test]
    fn hostile_gpt_headers_are_errors() {
        let h = SECTOR;
        // (field offset in the header, width, value, what the error says)
        let cases: &[(usize, usize, u64, &str)] = &[
            (12, 4, 0, "header size 0"),
            (12, 4, u64::from(u32::MAX), "header size 4294967295"),
            (72, 8, u64::MAX, "past the end"),
            // entries_lba * 512 overflows u64.
            (72, 8, u64::MAX / 512 + 1, "past the end"),
            (72, 8, 200, "past the end"),
            (72, 8, 0, "overlap"),
            (72, 8, 1, "overlap"),
            (84, 4, 0, "entries of 0 bytes"),
            (84, 4, 8, "entries of 8 bytes"),
            (84, 4, 129, "entries of 129 bytes"),
            (84, 4, 8192, "entries of 8192 bytes"),
            (84, 4, u64::from(u32::MAX), "entries of 4294967295 bytes"),
            (80, 4, u64::from(u32::MAX), "4294967295 entries"),
            (80, 4, 16385, "16385 entries"),
        ];
        for &(at, width, value, needle) in cases {
            let mut disk = gpt_disk(200, &[(40, 99, "root")]);
            put(&mut disk, h + at, width, value);
            reseal(&mut disk, SECTOR);
            let err = table_error(&disk);
            assert!(err.contains(needle), "{at}={value}: {err}");
        }
        // Within each limit, but too many bytes in all.
        let mut disk = gpt_disk(200, &[(40, 99, "root")]);
        put(&mut disk, h + 80, 4, 16384);
        put(&mut disk, h + 84, 4, 4096);
        reseal(&mut disk, SECTOR);
        let err = table_error(&disk);
        assert!(err.contains("more than the 2097152 bytes"), "{err}");
    }

    #[test]
    fn gpt_partitions_must_lie_within_the_disk_and_outside_the_table() {
        let cases: &[(u64, u64, &str)] = &[
            (
                100,
                50,
                "GPT partition 2 ends at sector 50, before its first sector 100",
            ),
            (
                40,
                200,
                "GPT partition 2 ends at sector 200, beyond the disk's 200 sectors",
            ),
            (40, u64::MAX, "beyond the disk's 200 sectors"),
            // last - first + 1 overflows u64.
            (0, u64::MAX, "beyond the disk's 200 sectors"),
            (u64::MAX - 1, u64::MAX, "beyond the disk's 200 sectors"),
            (u64::MAX, u64::MAX, "beyond the disk's 200 sectors"),
            (0, 99, "overlaps the partition table"),
            (1, 99, "overlaps the partition table"),
            (33, 99, "overlaps the partition table"),
            (10, 20, "overlaps the partition table"),
        ];
        for &(first, last, needle) in cases {
            let disk = gpt_disk(200, &[(34, 39, "ok"), (first, last, "bad")]);
            let err = table_error(&disk);
            assert!(err.contains(needle), "{first}..{last}: {err}");
        }
        // The last sector of the disk is still in it.
        let disk = gpt_disk(200, &[(34, 199, "all")]);
        let (_, parts) = partitions(&mut Cursor::new(&disk), disk.len() as u64).unwrap();
        assert_eq!(parts[0].offset + parts[0].size, disk.len() as u64);
        // With 4 KiB sectors the bound is in 4 KiB sectors, not 512-byte ones.
        let disk = gpt_disk_sized(4096, 64, &[(6, 64, "root")]);
        let err = table_error(&disk);
        assert!(
            err.contains("ends at sector 64, beyond the disk's 64 sectors"),
            "{err}"
        );
        // first * 4096 overflows u64.
        let disk = gpt_disk_sized(4096, 64, &[(u64::MAX / 4096 + 1, u64::MAX, "root")]);
        let err = table_error(&disk);
        assert!(err.contains("beyond the disk's 64 sectors"), "{err}");
    }

    #[test]
    fn mbr_partitions_must_lie_within_the_disk() {
        let cases: &[(u32, u32, &str)] = &[
            (
                10,
                291,
                "MBR partition 2 ends at sector 300, beyond the disk's 300 sectors",
            ),
            (299, 2, "ends at sector 300, beyond"),
            (u32::MAX, u32::MAX, "ends at sector 8589934589, beyond"),
            (300, 1, "ends at sector 300, beyond"),
            (
                0,
                100,
                "MBR partition 2 starts at sector 0, over the partition table",
            ),
        ];
        for &(start, len, needle) in cases {
            let mut disk = vec![0u8; 300 * SECTOR];
            disk[510] = 0x55;
            disk[511] = 0xAA;
            mbr_entry(&mut disk, 0, 0x83, 1, 9);
            mbr_entry(&mut disk, 1, 0x83, start, len);
            let err = table_error(&disk);
            assert!(err.contains(needle), "{start}+{len}: {err}");
        }
        // Up to the last sector is fine.
        let mut disk = vec![0u8; 300 * SECTOR];
        disk[510] = 0x55;
        disk[511] = 0xAA;
        mbr_entry(&mut disk, 0, 0x83, 10, 290);
        let (table, parts) = partitions(&mut Cursor::new(&disk), disk.len() as u64).unwrap();
        assert_eq!(table, Table::Mbr);
        assert_eq!(parts[0].offset + parts[0].size, disk.len() as u64);
    }

    #[test]
    fn hostile_ext4_superblocks_are_errors() {
        let part = Partition {
            number: 1,
            offset: 10 * SECTOR as u64,
            size: 100 * SECTOR as u64,
            name: String::new(),
        };
        let sb = 10 * SECTOR + 1024;
        let probe = |disk: &[u8]| match probe_ext4(&mut Cursor::new(disk), &part) {
            Ok(fs) => panic!("a hostile superblock was accepted: {fs:?}"),
            Err(e) => format!("{e:#}"),
        };
        let fresh = || {
            let mut disk = vec![0u8; 300 * SECTOR];
            put_ext4(&mut disk, 10 * SECTOR, "root", 12);
            disk
        };
        // 12 blocks of 4 KiB fit in 51200 bytes.
        assert!(probe_ext4(&mut Cursor::new(&fresh()), &part)
            .unwrap()
            .is_some());

        for log in [7u64, 22, 54, 63, 64, u64::from(u32::MAX)] {
            let mut disk = fresh();
            put(&mut disk, sb + 24, 4, log);
            let err = probe(&disk);
            assert!(err.contains("block size of 2^(10+"), "log {log}: {err}");
        }
        for blocks in [13u64, u64::from(u32::MAX)] {
            let mut disk = fresh();
            put(&mut disk, sb + 4, 4, blocks);
            let err = probe(&disk);
            assert!(
                err.contains("larger than the 51200 bytes"),
                "{blocks}: {err}"
            );
        }
        let mut disk = fresh();
        put(&mut disk, sb + 4, 4, 0);
        assert!(probe(&disk).contains("0 blocks"));
        // 64-bit block counts: blocks * block size overflows u64.
        let mut disk = fresh();
        put(&mut disk, sb + 96, 4, 0x80);
        put(&mut disk, sb + 0x150, 4, u64::from(u32::MAX));
        put(&mut disk, sb + 24, 4, 6);
        let err = probe(&disk);
        assert!(err.contains("larger than the 51200 bytes"), "{err}");

        // find_root names the partition.
        let mut disk = gpt_disk(200, &[(40, 99, "a"), (100, 199, "b")]);
        put_ext4(&mut disk, 40 * SECTOR, "small", 7);
        put_ext4(&mut disk, 100 * SECTOR, "big", 13);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        std::fs::write(&path, &disk).unwrap();
        let err = format!("{:#}", find_root(&path).unwrap_err());
        assert!(
            err.contains("partition 2: the ext4 filesystem is 13 blocks of 4096 bytes (53248 bytes), larger than the 51200 bytes"),
            "{err}"
        );
    }

    /// Numbers that tend to break sector and size arithmetic.
    fn interesting() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(33),
            Just(34),
            Just(128),
            Just(199),
            Just(200),
            Just(4096),
            Just(u64::from(u32::MAX)),
            Just(u64::MAX),
            Just(u64::MAX / 512 + 1),
            Just(u64::MAX / 4096 + 1),
            0u64..1024,
            any::<u64>(),
        ]
    }

    /// The fields of `disk` (a GPT disk with `sector`-byte sectors and ext4s at LBA 40
    /// and 100, or a plain MBR one) that the parser reads, as (offset, width).
    fn fields(sector: usize) -> Vec<(usize, usize)> {
        let mut f = vec![(510, 1), (511, 1)];
        for slot in 0..4 {
            let e = 446 + slot * 16;
            f.extend([(e + 4, 1), (e + 8, 4), (e + 12, 4)]);
        }
        let h = sector;
        f.extend([(h, 1), (h + 12, 4), (h + 72, 8), (h + 80, 4), (h + 84, 4)]);
        for i in 0..4 {
            let e = 2 * sector + i * 128;
            f.extend([(e, 1), (e + 32, 8), (e + 40, 8)]);
        }
        for part in [40, 100] {
            let sb = part * sector + 1024;
            f.extend([
                (sb + 4, 4),
                (sb + 24, 4),
                (sb + 56, 2),
                (sb + 96, 4),
                (sb + 0x150, 4),
            ]);
        }
        f
    }

    /// A valid disk to mutate: GPT (512-byte or 4 KiB sectors) or MBR, two ext4s.
    fn valid_disk(kind: u8) -> (Vec<u8>, usize) {
        match kind {
            0 | 1 => {
                let sector = if kind == 0 { 512 } else { 4096 };
                let mut disk = gpt_disk_sized(sector, 160, &[(40, 99, "a"), (100, 159, "b")]);
                put_ext4(&mut disk, 40 * sector, "a", (60 * sector / 4096) as u32);
                put_ext4(
                    &mut disk,
                    100 * sector,
                    ROOT_LABEL,
                    (60 * sector / 4096) as u32,
                );
                (disk, sector)
            }
            _ => {
                let mut disk = vec![0u8; 160 * SECTOR];
                disk[510] = 0x55;
                disk[511] = 0xAA;
                mbr_entry(&mut disk, 0, 0x83, 40, 60);
                mbr_entry(&mut disk, 1, 0x83, 100, 60);
                put_ext4(&mut disk, 40 * SECTOR, "a", 7);
                put_ext4(&mut disk, 100 * SECTOR, ROOT_LABEL, 7);
                (disk, SECTOR)
            }
        }
    }

    /// What must hold whatever the disk holds: no panic (the caller), and every
    /// partition and filesystem returned lies within the disk and its partition.
    fn check_invariants(disk: &[u8]) -> Result<(), TestCaseError> {
        let size = disk.len() as u64;
        let Ok((table, parts)) = partitions(&mut Cursor::new(disk), size) else {
            return Ok(());
        };
        for p in &parts {
            let end = p.offset.checked_add(p.size);
            prop_assert!(end.is_some_and(|e| e <= size), "{p:?} past {size}");
            match table {
                Table::Gpt => prop_assert!(p.offset >= 1024 && p.size > 0, "{p:?}"),
                Table::Mbr => prop_assert!(p.offset >= 512 && p.size > 0, "{p:?}"),
                Table::None => prop_assert!(p.offset == 0 && p.size == size, "{p:?}"),
            }
            if let Ok(Some(fs)) = probe_ext4(&mut Cursor::new(disk), p) {
                prop_assert!((1024..=65536).contains(&fs.block_size), "{fs:?}");
                prop_assert!(
                    u128::from(fs.blocks) * u128::from(fs.block_size) <= u128::from(p.size),
                    "{fs:?} in {p:?}"
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Valid tables with some of the numbers the parser reads replaced, the
        /// checksums usually made to match again so the numbers reach the parser,
        /// the disk sometimes cut short.
        #[test]
        fn mutated_tables_never_panic_nor_leave_the_disk(
            kind in 0u8..3,
            edits in prop::collection::vec((any::<prop::sample::Index>(), interesting()), 1..6),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            reseal_crcs in prop::bool::weighted(0.9),
            cut in prop::option::weighted(0.2, any::<prop::sample::Index>()),
        ) {
            let (mut disk, sector) = valid_disk(kind);
            let f = fields(sector);
            for (i, value) in edits {
                let (at, width) = f[i.index(f.len())];
                put(&mut disk, at, width, value);
            }
            for (i, x) in flips {
                let at = i.index(4 * sector);
                disk[at] ^= x;
            }
            if reseal_crcs {
                reseal(&mut disk, sector);
            }
            if let Some(cut) = cut {
                disk.truncate(cut.index(disk.len() + 1));
            }
            check_invariants(&disk)?;
        }

        /// Random bytes behind a boot signature: random MBR entries, or a GPT header
        /// that locates up to 12 random entries, with checksums made to match.
        #[test]
        fn random_tables_never_panic_nor_leave_the_disk(
            mut disk in prop::collection::vec(any::<u8>(), 0..24 * 512),
            gpt in any::<bool>(),
            count in 0u64..12,
        ) {
            if disk.len() >= 1024 {
                disk[510] = 0x55;
                disk[511] = 0xAA;
                if gpt {
                    disk[446 + 4] = 0xEE;
                    disk[512..520].copy_from_slice(b"EFI PART");
                    put(&mut disk, 512 + 12, 4, 92);
                    put(&mut disk, 512 + 72, 8, 2);
                    put(&mut disk, 512 + 80, 4, count);
                    put(&mut disk, 512 + 84, 4, 128);
                    reseal(&mut disk, 512);
                }
            }
            check_invariants(&disk)?;
        }
    }
}
