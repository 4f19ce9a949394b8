#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Generate msr-restore's per-model MSR tables (msr_backend/src/msrs/models_data.rs) from the
facts in LLNL msr-safe's own allowlists: which MSRs a CPU model has (msr-safe's templates, written
from the Intel SDM vol. 4 and AMD's PPRs, and its active lists), their names, and which of their
bits msr-safe lets a user write (the write masks of its active lists).

    python3 allowlists/gen_models.py            # rewrite msr_backend/src/msrs/models_data.rs
    python3 allowlists/gen_models.py --check    # exit 1 if the file differs from what it makes

The shipped allowlists are not generated here: `msrsave allowlist compile allowlists/policy.toml
--all` makes them from these tables and the site policy (see allowlists/README.md).

The msr-safe lists are read from --reference DIR, else $MSR_REFERENCE_ALLOWLISTS, else
<repo>/../shared/reference/msr-safe-allowlists (an unmodified copy of msr-safe's allowlists/
folder at commit cdafa357 plus contribs/riken and the v1.7.0 lists; see its README.md).
"""

import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(REPO, "msr_backend", "src", "msrs", "models_data.rs")

HEAD_COMMIT = "cdafa357731939741074157c1c23cb308364eb8c"
V170_COMMIT = "d33e8bfdc95a7fc8c1da8abe2726531d79b73ea4"
UPSTREAM = "https://github.com/LLNL/msr-safe"

# Architectural and power-management MSRs whose bit layout is the same on the Xeons from
# Broadwell-X to Sapphire Rapids: the core PMU, the frequency, energy-bias and RAPL controls,
# turbo and uncore ratio limits, plus the read-only clocks, energy counters and capability
# registers that give those meaning. For a CPU that msr-safe has only a template for, the write
# mask of one of these is carried over from the nearest earlier Xeon's v1.7.0 list; no other
# MSR's mask is carried over (its bits may mean something else on the newer core).
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
    enough for msr-safe's own lists, which have one entry per line; the Rust reference tests
    check the tables against the kernel-exact parser's reading of the same files.)"""
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


def v170_model(ref, v170, template):
    """Skylake-SP, Broadwell-X: the template's MSRs and every active entry of the v1.7.0 list for
    the same CPU, whose masks are the writable bits."""
    tmpl = template_entries(ref, template)
    src = active_entries(ref, f"v1.7.0/{v170}")
    rows = {}
    for m, n in tmpl.items():
        rows[m] = (n or "?", None, None)
    for m, k, n in src:
        rows[m] = (tmpl.get(m) or n or "?", k, f"msr-safe v1.7.0 {v170}")
    named = sum(1 for m, _, _ in src if tmpl.get(m))
    only_template = sum(1 for m in tmpl if m not in {s[0] for s in src})
    facts = [
        f"MSRs: msr-safe's template allowlists/{template} at commit {HEAD_COMMIT} ({len(tmpl)} MSRs, "
        f"from the Intel SDM vol. 4) and every active entry of allowlists/{v170} at tag v1.7.0 (commit "
        f"{V170_COMMIT}; {len(src)} MSRs, the uncore PMON boxes among them).",
        f"Writable bits: the v1.7.0 list's write masks, unchanged; unknown for the {only_template} MSRs "
        "only the template lists.",
        f"Names: the SDM vol. 4 name from the template for the {named} MSRs of the v1.7.0 list it lists, "
        "else the v1.7.0 comment.",
    ]
    return rows, facts


def template_model(ref, templates, same_cpu, mask_sources):
    """Ice Lake-SP, Sapphire Rapids (msr-safe has only templates for them): the templates' MSRs;
    writable bits from the same CPU's v1.7.0 list where there is one, else, for the curated MSRs
    only, from the first of mask_sources that has the MSR active."""
    tmpl = {}
    for t in templates:
        for m, n in template_entries(ref, t).items():
            tmpl.setdefault(m, n)
    own = {m: k for m, k, _ in active_entries(ref, f"v1.7.0/{same_cpu}")} if same_cpu else {}
    facts_by_src = [(s, {m: k for m, k, _ in active_entries(ref, f"v1.7.0/{s}")}) for s in mask_sources]
    rows, used, missing = {}, {}, []
    for m, n in tmpl.items():
        mask, src = None, None
        if m in own:
            mask, src = own[m], f"msr-safe v1.7.0 {same_cpu}"
            used.setdefault(same_cpu, []).append(m)
        elif m in CURATED_INTEL:
            for s, fact in facts_by_src:
                if m in fact:
                    mask, src = fact[m], f"msr-safe v1.7.0 {s}"
                    used.setdefault(s, []).append(m)
                    break
            else:
                missing.append(m)
        rows[m] = (n or "?", mask, src)
    extra = sorted(set(own) - set(tmpl))
    if extra:
        sys.exit(f"{same_cpu} lists MSRs its template does not: {[hex(m) for m in extra]}; review the rules")
    tlist = " and ".join(f"allowlists/{t}" if "/" not in t else t for t in templates)
    facts = [
        f"MSRs and names: msr-safe's template(s) {tlist} at commit {HEAD_COMMIT} ({len(tmpl)} MSRs, "
        "from the Intel SDM vol. 4; all entries commented out, masks 0).",
    ]
    if same_cpu:
        facts.append(
            f"Writable bits: the write masks of {same_cpu} at tag v1.7.0 (commit {V170_COMMIT}) for the "
            f"{len(used.get(same_cpu, []))} MSRs it lists; for the architectural and power-management MSRs "
            "whose layout is the same on earlier Xeons (CURATED_INTEL in allowlists/gen_models.py), the mask "
            "of the first of " + ", ".join(f"{s} ({V170_CPUS[s]})" for s in mask_sources)
            + " that has the MSR active; unknown for every other MSR."
        )
    else:
        facts.append(
            f"Writable bits: for the architectural and power-management MSRs whose layout is the same on "
            f"earlier Xeons (CURATED_INTEL in allowlists/gen_models.py), the mask of the first v1.7.0 list "
            f"(tag v1.7.0, commit {V170_COMMIT}) of "
            + ", ".join(f"{s} ({V170_CPUS[s]})" for s in mask_sources)
            + " that has the MSR active; unknown for every other MSR."
        )
    for s in ([same_cpu] if same_cpu else []) + mask_sources:
        if s in used and s != same_cpu:
            facts.append(f"  from {s}: " + " ".join(f"{m:#x}" for m in sorted(used[s])))
    if missing:
        facts.append(
            "  no mask fact (no v1.7.0 Xeon list has them active): " + " ".join(f"{m:#x}" for m in sorted(missing))
        )
    return rows, facts


def amd_model(ref, template):
    """AMD family 19h: the active entries of al_19_21 (masks and comments); for model 01h, the
    template's MSRs with al_19_21's masks and comments where it has the MSR."""
    src = active_entries(ref, "al_19_21")
    rows = {}
    facts = []
    if template:
        tmpl = template_entries(ref, template)
        for m, n in tmpl.items():
            rows[m] = (n or "?", None, None)
        extra = [m for m, _, _ in src if m not in tmpl]
        if extra:
            sys.exit(f"al_19_21 lists MSRs the {template} template does not: {[hex(m) for m in extra]}")
        facts.append(
            f"MSRs and names: msr-safe's template allowlists/{template} at commit {HEAD_COMMIT} "
            f"({len(tmpl)} MSRs, from the PPR for family 19h model 01h)."
        )
        facts.append(
            f"Writable bits and names: the active entries of allowlists/al_19_21 (family 19h model 21h, "
            f"same commit, identical to v1.7.0 al_1921) for the {len(src)} MSRs it lists, all of which the "
            "template lists; unknown for the others."
        )
    else:
        facts.append(
            f"MSRs, writable bits and names: the {len(src)} active entries of msr-safe's allowlists/al_19_21 "
            f"at commit {HEAD_COMMIT} (identical to v1.7.0 al_1921; from the PPR for family 19h model 21h)."
        )
    for m, k, n in src:
        rows[m] = (n or "?", k, "msr-safe al_19_21")
    return rows, facts


def build(ref):
    return [
        ("06", "55", "Intel", "Intel Xeon Skylake-SP (family 06h, model 55h; also Cascade Lake-SP and Cooper Lake)",
         *v170_model(ref, "al_0655", "al_06_55")),
        ("06", "4F", "Intel", "Intel Xeon E5 v4 / E7 v4, Broadwell-EP/EX (family 06h, model 4Fh)",
         *v170_model(ref, "al_064f", "al_06_4F")),
        ("06", "6A", "Intel", "Intel Xeon Scalable 3rd gen, Ice Lake-SP (family 06h, model 6Ah)",
         *template_model(ref, ["al_06_6A"], "al_066a", ["al_0655", "al_064f"])),
        ("06", "8F", "Intel", "Intel Xeon Scalable 4th gen, Sapphire Rapids (family 06h, model 8Fh)",
         *template_model(ref, ["al_06_8F", "contribs/riken/al_06_8F"], None, ["al_0655", "al_064f"])),
        ("19", "1", "Amd", "AMD family 19h model 01h, Zen 3 EPYC 7003 Milan", *amd_model(ref, "al_19_1")),
        ("19", "21", "Amd", "AMD family 19h model 21h, Zen 3 desktop (Ryzen 5000, Vermeer)", *amd_model(ref, None)),
    ]


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(models):
    out = [
        "// @generated by allowlists/gen_models.py from LLNL msr-safe's allowlists: do not edit; change",
        "// the generator and run it (see allowlists/README.md).",
        "//",
        f"// The facts below (MSR addresses, names and write masks) come from msr-safe ({UPSTREAM}),",
        "// LLNL-CODE-807679, Copyright Lawrence Livermore National Security, LLC and other msr-safe",
        "// Project Developers; licensed GPL-2.0-only like msr-safe, without warranty.",
        "// SPDX-License-Identifier: GPL-2.0-only",
        "",
        "use super::{CpuModel, ModelId, ModelMsr, Vendor};",
        "",
        "const fn w(addr: u32, name: &'static str, writable: u64, source: &'static str) -> ModelMsr {",
        "    ModelMsr { addr, name, writable: Some(writable), source }",
        "}",
        "",
        "const fn u(addr: u32, name: &'static str) -> ModelMsr {",
        "    ModelMsr { addr, name, writable: None, source: \"\" }",
        "}",
        "",
    ]
    statics = []
    table = ["pub(super) static MODELS: &[CpuModel] = &["]
    for fam, mod, vendor, name, rows, facts in models:
        ident = f"M_{fam}_{mod}"
        table.append("    CpuModel {")
        table.append(f"        id: ModelId {{ family: 0x{fam}, model: 0x{mod} }},")
        table.append(f"        vendor: Vendor::{vendor},")
        table.append(f"        name: {rust_str(name)},")
        table.append("        facts: &[")
        for f in facts:
            table.append(f"            {rust_str(f)},")
        table.append("        ],")
        table.append(f"        msrs: {ident},")
        table.append("    },")
        statics.append(f"static {ident}: &[ModelMsr] = &[")
        for m in sorted(rows):
            n, k, src = rows[m]
            if k is None:
                statics.append(f"    u(0x{m:08X}, {rust_str(n)}),")
            else:
                statics.append(f"    w(0x{m:08X}, {rust_str(n)}, 0x{k:016X}, {rust_str(src)}),")
        statics.append("];")
        statics.append("")
    table.append("];")
    return "\n".join(out + table + [""] + statics)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="msr-safe allowlists folder (see module doc)")
    ap.add_argument("--out", default=OUT, help="the Rust file to write (default: %(default)s)")
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
    text = render(build(ref))
    if args.check:
        try:
            with open(args.out, encoding="utf-8") as f:
                same = f.read() == text
        except OSError:
            same = False
        if not same:
            print(f"{args.out}: differs from what the generator makes", file=sys.stderr)
            return 1
        return 0
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"{args.out}: {sum(len(m[4]) for m in build(ref))} MSRs in {len(build(ref))} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
