//! CRC-64/NVME, the full-object checksum godwit computes while reading and S3 keeps.
//!
//! Multipart uploads read their parts in parallel, so the full-object checksum is combined from
//! the parts' checksums instead of computed over one sequential stream; a resumed upload combines
//! the recorded checksums of its finished parts without reading them again.

use godwit_storage::Crc64Nvme;

/// The CRC-64/NVME polynomial in reflected form.
const POLY: u64 = 0x9a6c_9329_ac4b_c9b5;

/// The checksum of `bytes`.
pub fn crc64nvme(bytes: &[u8]) -> Crc64Nvme {
    Crc64Nvme::of(bytes)
}

/// Multiplies the 64x64 GF(2) matrix `matrix` by `vector`.
fn times(matrix: &[u64; 64], mut vector: u64) -> u64 {
    let mut sum = 0;
    let mut row = 0;
    while vector != 0 {
        if vector & 1 != 0 {
            sum ^= matrix[row];
        }
        vector >>= 1;
        row += 1;
    }
    sum
}

fn square(matrix: &[u64; 64]) -> [u64; 64] {
    std::array::from_fn(|row| times(matrix, matrix[row]))
}

/// The checksum of `a ++ b` from the checksum of `a`, the checksum of `b` and the length of `b`.
/// (The zero-extension operator is applied to `a`'s checksum by repeated squaring, as zlib does for
/// CRC-32; CRC-64/NVME has the same all-ones initial value and final xor.)
pub fn combine(a: Crc64Nvme, b: Crc64Nvme, len_b: u64) -> Crc64Nvme {
    if len_b == 0 {
        return a;
    }
    // The operator for one zero bit, then two, then four.
    let mut odd = [0u64; 64];
    odd[0] = POLY;
    for (n, row) in odd.iter_mut().enumerate().skip(1) {
        *row = 1 << (n - 1);
    }
    let mut even = square(&odd);
    odd = square(&even);
    let mut crc = a.0;
    let mut len = len_b;
    loop {
        even = square(&odd);
        if len & 1 != 0 {
            crc = times(&even, crc);
        }
        len >>= 1;
        if len == 0 {
            break;
        }
        odd = square(&even);
        if len & 1 != 0 {
            crc = times(&odd, crc);
        }
        len >>= 1;
        if len == 0 {
            break;
        }
    }
    Crc64Nvme(crc ^ b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_check_value() {
        // The catalogue check value of CRC-64/NVME for "123456789".
        assert_eq!(crc64nvme(b"123456789").0, 0xae8b_1486_0a79_9888);
    }

    #[test]
    fn combining_parts_gives_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = crc64nvme(&data);
        for split in [0, 1, 7, 4096, 65_537, 99_999, 100_000] {
            let (a, b) = data.split_at(split);
            assert_eq!(
                combine(crc64nvme(a), crc64nvme(b), b.len() as u64),
                whole,
                "split at {split}"
            );
        }
        let parts: Vec<&[u8]> = data.chunks(30_000).collect();
        let combined = parts.iter().fold(crc64nvme(b""), |acc, part| {
            combine(acc, crc64nvme(part), part.len() as u64)
        });
        assert_eq!(combined, whole);
    }
}
