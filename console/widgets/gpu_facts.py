"""The GPU detail's fact lines: clocks, health and host link, as markup (pure functions, no Textual).

Each line is a run of short parts joined by `` · `` so it wraps between parts on
a narrow screen. A field the GPU or driver does not report reads ``n/a``; a
problem (throttling for heat, uncorrected ECC errors, a pending or failed
remap, XID errors) is coloured from the theme's warning and error colours.
"""

from __future__ import annotations

from gpufleet.server.schemas import THROTTLING_REASONS, GpuInfo

NA = "n/a"
SEP = " · "


def _mhz(value: int | None) -> str:
    return "—" if value is None else f"{value} MHz"


def _pct(value: int | None) -> str:
    return NA if value is None else f"{value}%"


def _label(text: str) -> str:
    return f"[$text-muted]{text}[/]"


def clocks_line(gpu: GpuInfo) -> str:
    """Clocks, P-state, fan, MIG and memory-bus load: the readings the graphs do not show."""
    parts = [
        f"SM {_mhz(gpu.sm_clock_mhz)}",
        f"mem {_mhz(gpu.memory_clock_mhz)}",
        f"P-state {gpu.pstate or '—'}",
        f"fan {'—' if gpu.fan_speed_pct is None else f'{gpu.fan_speed_pct}%'}",
        "MIG " + ("on" if gpu.mig_mode else "off" if gpu.mig_mode is False else "—"),
        f"mem util {'—' if gpu.utilization.memory_percent is None else f'{gpu.utilization.memory_percent}%'}",
    ]
    line = SEP.join(parts)
    if gpu.lost:
        line = "[$text-error]GPU is lost: the driver reports no readings[/]\n" + line
    return line


def throttle_part(reasons: list[str] | None) -> str:
    """``throttle none``; heat and hardware slowdowns in the error colour; ``n/a`` when unknown."""
    if reasons is None:
        return f"{_label('throttle')} {NA}"
    if not reasons:
        return f"{_label('throttle')} none"
    words = []
    for reason in reasons:
        word = reason.replace("_", " ")
        words.append(f"[$text-error]{word}[/]" if reason in THROTTLING_REASONS else word)
    return f"{_label('throttle')} " + ", ".join(words)


def ecc_part(gpu: GpuInfo) -> str:
    """``ECC 0 errors``, or ``ECC 37 corr/1 uncorr boot, 1843/2 life`` with uncorrected ones in red."""
    ecc = gpu.ecc_errors
    if ecc is None:
        return f"{_label('ECC')} {NA}"
    counts = (ecc.volatile_corrected, ecc.volatile_uncorrected, ecc.aggregate_corrected,
              ecc.aggregate_uncorrected)
    if all(c == 0 for c in counts):
        return f"{_label('ECC')} 0 errors"

    def count(value: int | None, bad: bool = False) -> str:
        if value is None:
            return "?"
        return f"[$text-error]{value}[/]" if bad and value else str(value)

    return (f"{_label('ECC')} {count(ecc.volatile_corrected)} corr/"
            f"{count(ecc.volatile_uncorrected, True)} uncorr boot, "
            f"{count(ecc.aggregate_corrected)}/{count(ecc.aggregate_uncorrected, True)} life")


def pages_part(gpu: GpuInfo) -> str:
    """Row remapping (Ampere on) or page retirement (before), with a pending reset or a failure."""
    rows = gpu.remapped_rows
    if rows is not None:
        counts = (f"{rows.correctable} corr/{rows.uncorrectable} uncorr"
                  if rows.correctable or rows.uncorrectable else "0")
        text = f"{_label('remapped rows')} {counts}"
        if rows.failed:
            return text + " [$text-error]remap failed: service the GPU[/]"
        return text + (" [$text-warning]pending reset[/]" if rows.pending else "")
    pages = gpu.retired_pages
    if pages is not None:
        single = "?" if pages.single_bit_ecc is None else pages.single_bit_ecc
        double = "?" if pages.double_bit_ecc is None else pages.double_bit_ecc
        counts = "0" if single == 0 and double == 0 else f"{single} single-bit/{double} double-bit"
        text = f"{_label('retired pages')} {counts}"
        return text + (" [$text-warning]pending reset[/]" if pages.pending else "")
    return f"{_label('retired pages')} {NA}"


def xid_part(gpu: GpuInfo) -> str:
    """``XID none`` or ``XID 2, last 63 at 15:00:01Z`` since the node's server started."""
    if gpu.xid_error_count is None:
        return f"{_label('XID')} {NA}"
    if not gpu.xid_error_count:
        return f"{_label('XID')} none"
    text = f"{_label('XID')} [$text-error]{gpu.xid_error_count}"
    if gpu.xid_errors:
        last = gpu.xid_errors[-1]
        text += f", last {last.xid} at {last.at:%H:%M:%S}Z"
    return text + "[/]"


def health_line(gpu: GpuInfo) -> str:
    """Throttling, ECC, retired pages or remapped rows, and XIDs, in one line."""
    return SEP.join([throttle_part(gpu.throttle_reasons), ecc_part(gpu), pages_part(gpu), xid_part(gpu)])


def _gb_s(kb_s: int | None) -> str:
    return "?" if kb_s is None else f"{kb_s / 1024 / 1024:.1f}"


def link_line(gpu: GpuInfo) -> str:
    """The PCIe link (generation, width, below its best) and throughput, and the video engines."""
    pcie = gpu.pcie
    if pcie is None:
        link = f"{_label('PCIe')} {NA}"
    else:
        shape = f"gen{pcie.link_gen or '?'} x{pcie.link_width or '?'}"
        best = (pcie.max_link_gen, pcie.max_link_width)
        if None not in best and best != (pcie.link_gen, pcie.link_width):
            # An idle GPU trains its link down to save power: said, not flagged.
            shape += f" (max gen{best[0]} x{best[1]})"
        link = f"{_label('PCIe')} {shape} TX {_gb_s(pcie.tx_kb_s)} RX {_gb_s(pcie.rx_kb_s)} GB/s"
    video = (f"{_label('NVENC')} {_pct(gpu.utilization.encoder_percent)}{SEP}"
             f"{_label('NVDEC')} {_pct(gpu.utilization.decoder_percent)}")
    return link + SEP + video
