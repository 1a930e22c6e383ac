"""What machine are we on (CUDA or not, GPU name and memory, which recipe profile fits it), and the GPUs r1lite
knows: one card table, with memory, speed and rental price, and one matcher for every way a card is named.

    >>> find_card("NVIDIA GeForce RTX 4090").usd_per_hour     # a device name, as CUDA reports it
    >>> card_by_name("16"), card_by_name("H200")                # a size or a model, as `r1lite plan --gpu` takes it
    >>> detected_card()                                         # this machine's GPU as the table knows it, or None
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from r1lite.errors import R1liteError
from r1lite.machine.distributed import pin_device
from r1lite.plan.memory import GIB

PRICES_DATE = "2026-11"  # when the table's rental prices were last checked


@dataclass(frozen=True)
class Card:
    """A GPU as the planner sees it. `model` is what its device name contains ("NVIDIA GeForce RTX 4090" holds
    "RTX 4090"): the matcher's key and the name a price is reported under."""

    name: str
    gib: float  # memory CUDA reports as total (a "16 GB" card: ~15.6 GiB)
    bandwidth_gbs: float = 0.0  # memory bandwidth, GB/s (vendor data sheets)
    tflops: float = 0.0  # dense bf16 tensor TFLOP/s with FP32 accumulate, as PyTorch's matmuls run (no sparsity)
    model: str = ""
    usd_per_hour: float | None = None  # on-demand, one GPU (editable default; cost.gpu_hourly_usd overrides it)
    bf16: bool = True  # bf16 tensor cores (compute capability 8.0+)


# The first card of each size is the one a `gpu-<N>gb` profile is planned for: the common, cheaper card of
# that size (the slower one, where sizes share a profile), so the plan's hours are not the best case.
# TFLOP/s: GeForce cards run bf16/fp16 matmuls with FP32 accumulate (PyTorch's) at half their FP16-accumulate
# rate, which the marketing figures quote; data-centre and workstation cards run them at full rate.
# Sources: NVIDIA Ampere GA102 whitepaper (v2, appendix A/C), Ada whitepaper (appendix A), RTX Blackwell
# whitepaper (appendix A), A100/H100/H200/L40S/A4000/T4/V100 data sheets; GeForce rows without a whitepaper
# entry derived as 512 dense FP32-accumulate FLOP per clock per SM x SMs x boost clock, which measured matmul
# rates match (torch-performance-test-data: 3060 25.5, 4060 31.2, 4060 Ti 43-48 TFLOP/s).
# Prices: USD per GPU-hour, on-demand, one GPU, each with where and when it was seen (RunPod = Community Cloud
# on-demand; Vast.ai = marketplace median); None where no rate was sourced.
CARDS: list[Card] = [
    # derived (measured 31.2); no sourced price
    Card("8 GB (RTX 4060)", 7.6, 272, 30.2, "RTX 4060"),
    # derived (measured 25.5); $ Vast.ai median, 2025-10 (kani-tts README, commit of 2025-10-28)
    Card("12 GB (RTX 3060)", 11.6, 360, 25.5, "RTX 3060", 0.093),
    # derived; no sourced price
    Card("12 GB (RTX 4070)", 11.6, 504, 58.3, "RTX 4070"),
    # 16 GB model; derived (measured 43-48); $ Vast.ai median, 2025-10 (kani-tts README, 2025-10-28)
    Card("16 GB (RTX 4060 Ti)", 15.6, 288, 44.1, "RTX 4060 Ti", 0.122),
    # 16 GB model; scaled from Blackwell rows; $ Vast.ai median, 2025-10 (kani-tts README, 2025-10-28)
    Card("16 GB (RTX 5060 Ti)", 15.6, 448, 47.4, "RTX 5060 Ti", 0.138),
    # data sheet 153.4 is sparse; full rate (measured 62.8); $ RunPod, 2026-08-26 (Secure Cloud 0.25, 2026-10-03)
    Card("16 GB (RTX A4000)", 15.6, 448, 76.7, "A4000", 0.17),
    # Ada whitepaper: 194.9 FP16-acc, 97.5 FP32-acc; $ Vast.ai median, 2025-10 (kani-tts README, 2025-10-28)
    Card("16 GB (RTX 4080)", 15.6, 717, 97.5, "RTX 4080", 0.22),
    # fp16 only: r1lite trains in fp16 there; $ Google Cloud on-demand, 2025-02-06 (marketplaces list it cheaper,
    # undated)
    Card("16 GB (Tesla T4)", 14.7, 320, 65, "T4", 0.35, bf16=False),
    # SXM2, fp16 only; no sourced price
    Card("16 GB (V100)", 15.8, 900, 125, "V100", bf16=False),
    # GA102 whitepaper: 142 FP16-acc, 71 FP32-acc; $ RunPod, 2026-08-26
    Card("24 GB (RTX 3090)", 23.6, 936, 71, "RTX 3090", 0.22),
    # Ada whitepaper: 330.3 FP16-acc, 165.2 FP32-acc; $ RunPod 0.34, 2026-08-26 (Vast.ai 0.16-0.54, 2026-02)
    Card("24 GB (RTX 4090)", 23.6, 1008, 165.2, "RTX 4090", 0.35),
    # data sheet; 72 W cap: large matmuls settle at 55-59 measured; $ RunPod 0.44, 2026-08-26
    Card("24 GB (L4)", 22.0, 300, 121, "L4", 0.45),
    # data sheet says 125, accumulate unstated; half rate assumed; $ typical community-cloud rate, 2026-11
    # (Lambda lists 1.29, 2026-09-09)
    Card("24 GB (A10)", 22.5, 600, 62.5, "A10", 0.60),
    # Blackwell whitepaper: 419 FP16-acc, 209.5 FP32; $ RunPod, 2026-09-07
    Card("32 GB (RTX 5090)", 31.4, 1792, 209.5, "RTX 5090", 0.69),
    # data sheet, full rate (measured 269); $ RunPod, 2026-09-07
    Card("48 GB (L40S)", 44.4, 864, 362, "L40S", 0.79),
    # GA102 whitepaper appendix C; $ RunPod, 2026-09-09
    Card("48 GB (RTX A6000)", 47.5, 768, 154.8, "A6000", 0.33),
    # A100 data sheet (SXM); $ 80 GB: RunPod 1.19 PCIe / 1.39 SXM, 2026-08-26
    Card("80 GB (A100)", 79.2, 2039, 312, "A100", 1.30),
    # H100 whitepaper table 3 (SXM); $ typical community-cloud rate, 2026-11 (RunPod 1.99 PCIe / 2.69 SXM,
    # 2026-08-26)
    Card("80 GB (H100)", 79.2, 3350, 989, "H100", 2.10),
    # data sheet 1,979 is sparse; $ typical community-cloud rate, 2026-11 (RunPod ~3.59, 2026-08-26)
    Card("H200", 139.8, 4800, 989, "H200", 3.00),
]


def find_card(name: str | None) -> Card | None:
    """The card a size ("16", "16gb"), a device name ("NVIDIA GeForce RTX 4090", "NVIDIA A10G") or a shorthand
    ("4090", "h200") names; None when none does.

    A device name holds a card's model as a whole word (an A10G is an A10, an L40 is no L4, an A100 no A10),
    the longest model first (a 4060 Ti is no 4060); a shorthand is part of a card's name, the table's first.
    """
    if not name:
        return None
    key = name.lower().replace(" ", "").removesuffix("gb").removesuffix("gib")
    sized = [c for c in CARDS if c.name.split()[0].lower() == key]
    if sized:
        return sized[0]
    device = " ".join(name.upper().replace("GEFORCE", " ").split())
    named = [c for c in CARDS if c.model and re.search(rf"(?<![A-Z0-9]){re.escape(c.model.upper())}(?!\d)", device)]
    if named:
        return max(named, key=lambda c: len(c.model))
    return next((c for c in CARDS if key and key in c.name.lower().replace(" ", "")), None)


def card_by_name(name: str) -> Card:
    """`find_card`, or one line naming the cards there are."""
    card = find_card(name)
    if card is None:
        valid = ", ".join(c.name for c in CARDS)
        raise R1liteError(f"unknown GPU '{name}'; use --vram GIB, or one of: {valid}")
    return card


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    gpu_name: str | None
    gpu_total_gib: float
    gpu_free_gib: float
    bf16: bool = True  # bf16 tensor cores (compute capability 8.0+); T4 and V100 lack them
    capability: tuple[int, int] | None = None


def probe() -> Hardware:
    """This process's GPU (under several processes each its own: the first CUDA call pins it), or none."""
    import torch

    if not torch.cuda.is_available():
        return Hardware(False, None, 0.0, 0.0)
    pin_device()
    index = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    capability = torch.cuda.get_device_capability(index)
    return Hardware(
        True,
        torch.cuda.get_device_name(index),
        total / GIB,
        free / GIB,
        bf16=capability >= (8, 0),
        capability=capability,
    )


def pick_profile(available: list[str], hw: Hardware) -> str | None:
    """`cpu` without CUDA; otherwise the largest `gpu-<N>gb` profile with N within the card's memory."""
    if not hw.cuda:
        return "cpu" if "cpu" in available else None
    sized = []
    for name in available:
        m = re.fullmatch(r"gpu-(\d+)gb", name)
        # marketing GB vs GiB and driver reservations: a "16 GB" card reports ~15.6 GiB
        if m and int(m.group(1)) <= hw.gpu_total_gib * 1.1:
            sized.append((int(m.group(1)), name))
    if sized:
        return max(sized)[1]
    gpu = [n for n in available if n.startswith("gpu")]
    return gpu[0] if gpu else None


def detect_profile(available: list[str]) -> str | None:
    return pick_profile(available, probe())


def card_for_profile(profile: str | None) -> Card | None:
    """The card a `gpu-<N>gb` profile (or a variant of it, `gpu-<N>gb-<what>`) is named for."""
    m = re.fullmatch(r"gpu-(\d+)gb(-[\w.-]+)?", profile or "")
    return card_by_name(m.group(1)) if m else None


def detected_card(vram_gib: float | None = None) -> Card | None:
    """The card this machine has (None without CUDA), or one of `vram_gib`."""
    if vram_gib is not None:
        return Card(f"{vram_gib:g} GiB card", vram_gib)
    hw = probe()
    if not hw.cuda:
        return None
    known = find_card(hw.gpu_name)
    return (
        replace(known, name=hw.gpu_name or known.name, gib=hw.gpu_total_gib)
        if known
        else Card(hw.gpu_name or "GPU", hw.gpu_total_gib)
    )
