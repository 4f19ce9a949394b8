#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Generate msr-restore's allowlists from the facts (addresses and write masks) in LLNL
msr-safe's own allowlists.

    python3 allowlists/gen_allowlists.py            # rewrite the lists in allowlists/
    python3 allowlists/gen_allowlists.py --check    # exit 1 if a list differs from what it makes

The msr-safe lists are read from --reference DIR, else $MSR_REFERENCE_ALLOWLISTS, else
<repo>/../shared/reference/msr-safe-allowlists (an unmodified copy of msr-safe's allowlists/
folder at commit cdafa357 plus contribs/riken and the v1.7.0 lists; see its README.md).

How each list is derived is printed in its header and explained in allowlists/README.md.
"""

import argparse
import os
import re
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

HEAD_COMMIT = "cdafa357731939741074157c1c23cb308364eb8c"
V170_COMMIT = "d33e8bfdc95a7fc8c1da8abe2726531d79b73ea4"
UPSTREAM = "https://github.com/LLNL/msr-safe"

# Intel MSRs a job tunes or that a restore needs to interpret them: the core PMU, the frequency,
# energy-bias and RAPL controls, turbo and uncore ratio limits, plus the read-only clocks, energy
# counters and capability registers that give those meaning. An address from this set goes into
# a list derived from a template only if the CPU's template lists it AND a v1.7.0 list gives it
# an active entry (whose write mask is then used).
CURATED_INTEL = sorted(
    set(range(0xC1, 0xC9))  # IA32_PMC0-7
    | set(range(0x186, 0x18E))  # IA32_PERFEVTSEL0-7
    | set(range(0x309, 0x30D))  # IA32_FIXED_CTR0-3
    | {0x38D, 0x38F}  # IA32_FIXED_CTR_CTRL, IA32_PERF_GLOBAL_CTRL
    | {0x1A6, 0x1A7}  # MSR_OFFCORE_RSP_0/1
    | {0x10, 0xE7, 0xE8, 0xCE}  # TSC, MPERF, APERF, PLATFORM_INFO
    | {0x198, 0x199, 0x19A}  # PERF_STATUS, PERF_CTL, CLOCK_MODULATION
    | {0x1B0}  # IA32_ENERGY_PERF_BIAS
    | {0x1A4}  # MSR_MISC_FEATURE_CONTROL (prefetchers)
    | {0x1AD, 0x1AE}  # MSR_TURBO_RATIO_LIMIT, _LIMIT1 / _CORES
    | {0x770, 0x771, 0x772, 0x774}  # HWP: PM_ENABLE, CAPABILITIES, REQUEST_PKG, REQUEST
    | {0x606, 0x610, 0x611, 0x613, 0x614}  # RAPL unit, package limit/energy/perf/info
    | {0x618, 0x619, 0x61B, 0x61C}  # RAPL DRAM limit/energy/perf/info
    | {0x638, 0x639, 0x65C}  # RAPL PP0 limit/energy, platform limit
    | {0x620, 0x621}  # MSR_UNCORE_RATIO_LIMIT, MSR_UNCORE_PERF_STATUS
)

INTEL_HEADER_NAME = "Intel 64 and IA-32 SDM vol. 4 names"

V170_CPUS = {
    "al_062a": "Sandy Bridge",
    "al_062d": "Sandy Bridge-EP",
    "al_063c": "Haswell",
    "al_063e": "Ivy Bridge-EP",
    "al_063f": "Haswell-EP",
    "al_0645": "Haswell-ULT",
    "al_0646": "Haswell-GT3e",
    "al_064f": "Broadwell-X",
    "al_0655": "Skylake-SP",
    "al_0657": "Knights Landing",
    "al_066a": "Ice Lake-SP",
    "al_1921": "AMD Zen 3",
}


def kstrtoull(tok):
    """The kernel's kstrtoull(tok, 0): optional '+', 0x hex, leading-0 octal, else decimal."""
    s = tok[1:] if tok.startswith("+") else tok
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", s):
        return int(s[2:], 16)
    if re.fullmatch(r"0[0-7]*", s):
        return int(s, 8)
    if re.fullmatch(r"[1-9][0-9]*", s):
        return int(s)
    raise ValueError(f"not a number: {tok!r}")


def clean_name(comment):
    """'"IA32_PMC0 (Table: 2-20)"' -> 'IA32_PMC0'; '"SMSR_PMC0"' -> 'SMSR_PMC0'."""
    c = (comment or "").strip().strip('"').strip()
    c = re.sub(r"\s*\(Table:[^)]*\)\s*$", "", c)
    return c.strip().strip('"').strip()


def read(ref, rel):
    with open(os.path.join(ref, rel), "rb") as f:
        return f.read().decode("latin-1")


def active_entries(ref, rel):
    """[(msr, mask, name)] of the lines whose first token is a number, in file order. (Good
    enough for msr-safe's own lists, which have one entry per line; the Rust tests check it
    against the kernel-exact parser.)"""
    out = []
    for line in read(ref, rel).split("\n"):
        code, _, comment = line.partition("#")
        toks = code.split()
        if not toks:
            continue
        out.append((kstrtoull(toks[0]), kstrtoull(toks[1]), clean_name(comment)))
    if len({m for m, _, _ in out}) != len(out):
        sys.exit(f"{rel}: duplicate MSR in a reference list")
    return out


TEMPLATE_LINE = re.compile(r"^#\s*(0[xX][0-9a-fA-F]+)\s+(0[xX][0-9a-fA-F]+)\s*(?:#(.*))?$")


def template_entries(ref, rel):
    """{msr: name} of the commented-out entries of an msr-safe template."""
    out = {}
    for line in read(ref, rel).split("\n"):
        m = TEMPLATE_LINE.match(line.strip())
        if m:
            out.setdefault(int(m.group(1), 16), clean_name(m.group(3)))
    return out


def header(cpu, file_name, lines, entries):
    writable = sum(1 for _, mask, _ in entries if mask)
    text = [
        f"# msr-restore allowlist for {cpu}.",
        f"# Named as msr-safe names lists (al_<family>_<model>). Load it in one write:",
        f"#   cat {file_name} > /dev/cpu/msr_allowlist",
        "#",
        f"# Derived from LLNL msr-safe ({UPSTREAM}), LLNL-CODE-807679,",
        "# Copyright Lawrence Livermore National Security, LLC and other msr-safe Project Developers",
        "# (see the COPYRIGHT, LICENSE and NOTICE files of msr-safe, which also carry the LLNL/US DOE",
        "# disclaimer). The addresses and write masks below come from msr-safe's allowlists; like them,",
        "# this file is licensed under the GNU General Public License version 2 only, without warranty.",
        "# SPDX-License-Identifier: GPL-2.0-only",
        "#",
    ]
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip()))
        for part in textwrap.wrap(line, width=96, subsequent_indent=indent + "  ") or [""]:
            text.append(f"# {part}".rstrip())
    text += [
        "#",
        f"# {len(entries)} entries, {writable} with a write mask. Generated by allowlists/gen_allowlists.py;",
        "# change the generator, not this file (see allowlists/README.md).",
        "#",
        "# MSR     write mask         name",
    ]
    return "\n".join(text) + "\n"


def render(cpu, file_name, lines, entries):
    body = "".join(f"0x{m:08X} 0x{k:016X} # {n}\n" for m, k, n in entries)
    return header(cpu, file_name, lines, entries) + body


def from_v170(ref, v170, template, cpu, file_name):
    """Every active entry of a v1.7.0 list, unchanged; names from the current template."""
    tmpl = template_entries(ref, template)
    src = active_entries(ref, f"v1.7.0/{v170}")
    entries = [(m, k, tmpl.get(m) or n or "?") for m, k, n in src]
    named = sum(1 for m, _, _ in src if tmpl.get(m))
    lines = [
        f"Entries: every active entry of msr-safe allowlists/{v170} at tag v1.7.0 (commit "
        f"{V170_COMMIT}), addresses and write masks unchanged, same order.",
        f"Names: {INTEL_HEADER_NAME} from the template allowlists/{template} at commit "
        f"{HEAD_COMMIT} for the {named} MSRs it lists; the v1.7.0 comment for the others "
        "(uncore PMON boxes and a few more, which the template does not list).",
    ]
    return render(cpu, file_name, lines, entries), []


def from_template(ref, templates, mask_sources, cpu, file_name):
    """The curated MSRs the CPU's template(s) list, each with the write mask of the first v1.7.0
    list in mask_sources that has it active; curated MSRs with no such fact are left out."""
    tmpl = {}
    for t in templates:
        for m, n in template_entries(ref, t).items():
            tmpl.setdefault(m, n)
    facts = [(src, {m: k for m, k, _ in active_entries(ref, f"v1.7.0/{src}")}) for src in mask_sources]
    entries, used, missing = [], {}, []
    for m in CURATED_INTEL:
        if m not in tmpl:
            continue
        for src, fact in facts:
            if m in fact:
                entries.append((m, fact[m], tmpl[m] or "?"))
                used.setdefault(src, []).append(m)
                break
        else:
            missing.append((m, tmpl[m]))
    tlist = " and ".join(f"allowlists/{t}" if "/" not in t else t for t in templates)
    lines = [
        f"Addresses: msr-safe's template(s) for this CPU, {tlist} at commit {HEAD_COMMIT} "
        "(all entries commented out, masks 0), restricted to the architectural and "
        "power-management MSRs a job tunes (PMCs, PERFEVTSELs, fixed counters, OFFCORE_RSP, "
        "PERF_CTL, CLOCK_MODULATION, ENERGY_PERF_BIAS, prefetcher control, turbo ratio limits, "
        "HWP, RAPL limits and counters, uncore ratio limit, TSC/APERF/MPERF).",
        f"Write masks: from the active entries of the v1.7.0 lists (tag v1.7.0, commit "
        f"{V170_COMMIT}), taking the first of "
        + ", ".join(f"{m} ({V170_CPUS[m]})" for m in mask_sources)
        + " that has the MSR:",
    ]
    for src in mask_sources:
        if src in used:
            lines.append(f"  {src}: " + " ".join(f"{m:#x}" for m in used[src]))
    if missing:
        others = {}
        for rel in sorted(os.listdir(os.path.join(ref, "v1.7.0"))):
            if rel not in mask_sources:
                for m, k, _ in active_entries(ref, f"v1.7.0/{rel}"):
                    cpu_name = V170_CPUS.get(rel, "?")
                    others.setdefault(m, []).append(f"{rel} ({cpu_name}, mask {k:#x})")
        lines.append(
            f"Left out: MSRs the template lists but none of {', '.join(mask_sources)} has active, "
            "so there is no write mask to take for this CPU:"
        )
        for m, n in missing:
            note = f"; v1.7.0 has it only in {', '.join(others[m])}" if m in others else ""
            lines.append(f"  {m:#x} {n}{note}")
    lines.append(f"Names: {INTEL_HEADER_NAME}, from the template.")
    return render(cpu, file_name, lines, entries), missing


def amd(ref, restrict_template, cpu, file_name):
    src = active_entries(ref, "al_19_21")
    lines = [
        f"Entries: the active entries of msr-safe allowlists/al_19_21 at commit {HEAD_COMMIT} "
        "(identical to v1.7.0 al_1921): addresses, write masks and comments unchanged, same order.",
    ]
    if restrict_template:
        tmpl = template_entries(ref, restrict_template)
        kept = [e for e in src if e[0] in tmpl]
        dropped = [e for e in src if e[0] not in tmpl]
        lines.append(
            f"Kept only where the Milan template allowlists/{restrict_template} (same commit; from the "
            "PPR for family 19h model 01h) lists the MSR: "
            + (f"{len(dropped)} dropped." if dropped else "it lists all of them.")
        )
        src = kept
    return render(cpu, file_name, lines, src), []


def build(ref):
    skx = "Intel Xeon Skylake-SP (family 06h, model 55h; also Cascade Lake-SP and Cooper Lake)"
    bdx = "Intel Xeon E5 v4 / E7 v4, Broadwell-EP/EX (family 06h, model 4Fh)"
    icx = "Intel Xeon Scalable 3rd gen, Ice Lake-SP (family 06h, model 6Ah)"
    spr = "Intel Xeon Scalable 4th gen, Sapphire Rapids (family 06h, model 8Fh)"
    milan = "AMD family 19h model 01h, Zen 3 EPYC 7003 Milan"
    zen3d = "AMD family 19h model 21h, Zen 3 desktop (Ryzen 5000, Vermeer)"
    return {
        "al_06_55": from_v170(ref, "al_0655", "al_06_55", skx, "al_06_55"),
        "al_06_4F": from_v170(ref, "al_064f", "al_06_4F", bdx, "al_06_4F"),
        "al_06_6A": from_template(ref, ["al_06_6A"], ["al_066a", "al_0655", "al_064f"], icx, "al_06_6A"),
        "al_06_8F": from_template(
            ref, ["al_06_8F", "contribs/riken/al_06_8F"], ["al_0655", "al_064f"], spr, "al_06_8F"
        ),
        "al_19_1": amd(ref, "al_19_1", milan, "al_19_1"),
        "al_19_21": amd(ref, None, zen3d, "al_19_21"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="msr-safe allowlists folder (see module doc)")
    ap.add_argument("--out", default=HERE, help="where to write the lists (default: this folder)")
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = ap.parse_args()
    ref = (
        args.reference
        or os.environ.get("MSR_REFERENCE_ALLOWLISTS")
        or os.path.join(REPO, "..", "shared", "reference", "msr-safe-allowlists")
    )
    readme = os.path.join(ref, "README.md")
    if not os.path.isfile(readme):
        sys.exit(f"no msr-safe reference allowlists at {ref} (set --reference or MSR_REFERENCE_ALLOWLISTS)")
    with open(readme, encoding="utf-8") as f:
        r = f.read()
    for commit in (HEAD_COMMIT, V170_COMMIT):
        if commit not in r:
            sys.exit(f"{readme} does not name commit {commit}: the reference changed, review the generator")
    bad = 0
    for name, (text, missing) in build(ref).items():
        path = os.path.join(args.out, name)
        if len(text.encode()) > 128 * 1024:
            sys.exit(f"{name}: larger than msr-safe's 128 KiB limit")
        if args.check:
            try:
                with open(path, encoding="utf-8") as f:
                    same = f.read() == text
            except OSError:
                same = False
            if not same:
                print(f"{path}: differs from what the generator makes", file=sys.stderr)
                bad += 1
            continue
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        n = sum(1 for line in text.split("\n") if line[:2] == "0x")
        print(f"{path}: {n} entries" + (f"; left out for lack of a mask fact: {[hex(m) for m, _ in missing]}" if missing else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
