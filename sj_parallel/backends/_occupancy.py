"""Theoretical occupancy of a kernel launch (the CUDA occupancy calculator's rules).

Used by the launcher to size grids (SM count x resident blocks per SM) and by the
static performance model (``benchmarks/kernel_model.py``); it needs no GPU. The limits
per architecture are NVIDIA's (CUDA C Programming Guide, "Compute Capabilities").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM resources of one compute capability."""

    name: str
    max_threads: int  # resident threads per SM
    max_blocks: int  # resident blocks per SM
    regs: int  # 32-bit registers per SM
    reg_unit: int  # registers are allocated per warp in units of this many
    smem: int  # shared memory per SM usable by blocks (bytes)
    smem_per_block_reserved: int  # shared memory the system keeps per block
    smem_unit: int  # shared memory allocation granularity (bytes)


ARCHS: Dict[int, ArchLimits] = {
    70: ArchLimits("sm_70", 2048, 32, 65536, 256, 96 * 1024, 0, 256),
    75: ArchLimits("sm_75", 1024, 16, 65536, 256, 64 * 1024, 0, 256),
    80: ArchLimits("sm_80", 2048, 32, 65536, 256, 164 * 1024, 1024, 128),
    86: ArchLimits("sm_86", 1536, 16, 65536, 256, 100 * 1024, 1024, 128),
    89: ArchLimits("sm_89", 1536, 24, 65536, 256, 100 * 1024, 1024, 128),
    90: ArchLimits("sm_90", 2048, 32, 65536, 256, 228 * 1024, 1024, 128),
}


def limits(cc: int) -> ArchLimits:
    """The limits of compute capability ``cc`` (e.g. 90), or the closest older one's."""
    known = [a for a in sorted(ARCHS) if a <= cc]
    return ARCHS[known[-1] if known else min(ARCHS)]


def resident_blocks(
    cc: int, block: int, regs_per_thread: int, smem_per_block: int
) -> int:
    """Blocks of ``block`` threads that fit on one SM at once (0 if none)."""
    lim = limits(cc)
    warps = math.ceil(block / 32)
    by_threads = lim.max_threads // (warps * 32)
    regs_per_warp = (
        math.ceil(max(regs_per_thread, 1) * 32 / lim.reg_unit) * lim.reg_unit
    )
    by_regs = (lim.regs // regs_per_warp) // warps
    smem = smem_per_block + lim.smem_per_block_reserved
    smem = math.ceil(smem / lim.smem_unit) * lim.smem_unit
    by_smem = lim.smem // smem if smem > 0 else lim.max_blocks
    return max(0, min(lim.max_blocks, by_threads, by_regs, by_smem))


def occupancy(cc: int, block: int, regs_per_thread: int, smem_per_block: int) -> float:
    """Resident warps per SM over the maximum (0..1)."""
    lim = limits(cc)
    blocks = resident_blocks(cc, block, regs_per_thread, smem_per_block)
    return blocks * math.ceil(block / 32) / (lim.max_threads // 32)
