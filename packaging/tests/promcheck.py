#!/usr/bin/env python3
"""Check that a file is valid Prometheus text exposition format (version 0.0.4), as the
node_exporter textfile collector reads it, and optionally that given metric families exist.

    promcheck.py FILE [--require NAME ...] [--gauge-range NAME MIN MAX ...]

Prints one line per problem (with its line number) and exits 1 if there is any; on success
prints the families found. Follows the format's rules:
  * `# HELP name text` and `# TYPE name type` at most once per family, TYPE before samples;
  * sample: name [ {label="value",...} ] value [ timestamp ], names and label names valid,
    label values with only \\\\, \\" and \\n escapes, values Go floats (NaN, +Inf, -Inf);
  * all lines of a family together (no family reopened later), no duplicate series;
  * histogram/summary samples use the _bucket/_sum/_count suffixes and le/quantile labels;
  * the file ends with a newline and is UTF-8.
"""

import math
import re
import sys

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Inf|inf|NaN|nan)")


def parse_value(s):
    if not FLOAT.fullmatch(s):
        raise ValueError(f"bad value {s!r}")
    return float(s)


def parse_labels(s, i, lineno):
    """Parse `{a="x",b="y"}` starting at s[i] == '{'; return (labels, index after '}')."""
    labels = {}
    i += 1
    while True:
        while i < len(s) and s[i] in " \t":
            i += 1
        if i < len(s) and s[i] == "}":
            return labels, i + 1
        m = LABEL.match(s, i)
        if not m:
            raise ValueError(f"bad label name at column {i + 1}")
        name = m.group(0)
        if name.startswith("__"):
            raise ValueError(f"label name {name!r} is reserved")
        i = m.end()
        while i < len(s) and s[i] in " \t":
            i += 1
        if s[i : i + 2] != '="':
            raise ValueError(f"expected =\" after label {name!r}")
        i += 2
        val = []
        while True:
            if i >= len(s):
                raise ValueError(f"unterminated value of label {name!r}")
            c = s[i]
            if c == "\\":
                nxt = s[i + 1 : i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise ValueError(f"bad escape \\{nxt} in label {name!r}")
                val.append({"\\": "\\", '"': '"', "n": "\n"}[nxt])
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise ValueError("newline in a label value")
            else:
                val.append(c)
                i += 1
        if name in labels:
            raise ValueError(f"label {name!r} repeated")
        labels[name] = "".join(val)
        while i < len(s) and s[i] in " \t":
            i += 1
        if i < len(s) and s[i] == ",":
            i += 1
            continue
        if i < len(s) and s[i] == "}":
            return labels, i + 1
        raise ValueError(f"expected , or }} at column {i + 1}")


def family_of(name, types):
    """The family a sample name belongs to (histogram/summary suffixes stripped)."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if types.get(base) in ("histogram", "summary"):
                if suffix == "_bucket" and types[base] != "histogram":
                    return name
                return base
    return name


def check(text):
    """Return (problems, families, samples) for exposition text."""
    problems = []
    helps, types = {}, {}
    families = []  # in order of first appearance
    closed = set()
    current = None
    series = set()
    samples = {}  # family -> list of (name, labels, value)

    def enter(fam, lineno):
        nonlocal current
        if fam != current:
            if fam in closed:
                problems.append(f"line {lineno}: family {fam} appears again after other families")
            if current is not None:
                closed.add(current)
            current = fam
            if fam not in families:
                families.append(fam)

    if text and not text.endswith("\n"):
        problems.append("the file does not end with a newline")
    for lineno, line in enumerate(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), 1):
        if line.strip() == "":
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 2 and parts[1] in ("HELP", "TYPE"):
                if len(parts) < 3 or not NAME.fullmatch(parts[2]):
                    problems.append(f"line {lineno}: # {parts[1]} without a valid metric name")
                    continue
                name = parts[2]
                enter(name, lineno)
                if parts[1] == "HELP":
                    if name in helps:
                        problems.append(f"line {lineno}: second HELP for {name}")
                    helps[name] = parts[3] if len(parts) > 3 else ""
                    if re.search(r"\\[^\\n]", helps[name]):
                        problems.append(f"line {lineno}: HELP of {name} has an escape other than \\\\ or \\n")
                else:
                    t = parts[3].strip() if len(parts) > 3 else ""
                    if t not in TYPES:
                        problems.append(f"line {lineno}: TYPE {t!r} of {name} is not one of {sorted(TYPES)}")
                    if name in types:
                        problems.append(f"line {lineno}: second TYPE for {name}")
                    if name in samples:
                        problems.append(f"line {lineno}: TYPE of {name} after its samples")
                    types[name] = t
            continue  # other comments are allowed anywhere
        m = NAME.match(line)
        if not m:
            problems.append(f"line {lineno}: not a metric name: {line!r}")
            continue
        name = m.group(0)
        i = m.end()
        labels = {}
        try:
            if i < len(line) and line[i] == "{":
                labels, i = parse_labels(line, i, lineno)
            rest = line[i:]
            if not rest.startswith((" ", "\t")):
                raise ValueError("expected a space before the value")
            fields = rest.split()
            if len(fields) not in (1, 2):
                raise ValueError(f"expected value [timestamp], got {fields!r}")
            value = parse_value(fields[0])
            if len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1]):
                raise ValueError(f"timestamp {fields[1]!r} is not an integer (milliseconds)")
        except (ValueError, IndexError) as e:
            problems.append(f"line {lineno}: {e}")
            continue
        fam = family_of(name, types)
        enter(fam, lineno)
        t = types.get(fam, "untyped")
        if t == "histogram" and name.endswith("_bucket") and "le" not in labels:
            problems.append(f"line {lineno}: histogram bucket {name} without an le label")
        if t == "summary" and name == fam and "quantile" not in labels:
            problems.append(f"line {lineno}: summary sample {name} without a quantile label")
        if t == "counter" and not math.isnan(value) and value < 0:
            problems.append(f"line {lineno}: counter {name} is negative")
        key = (name, tuple(sorted(labels.items())))
        if key in series:
            problems.append(f"line {lineno}: duplicate series {name}{labels}")
        series.add(key)
        samples.setdefault(fam, []).append((name, labels, value))
    for fam in list(helps) + list(types):
        if fam not in samples:
            problems.append(f"family {fam} has HELP/TYPE but no sample")
    return sorted(set(problems), key=problems.index), families, samples, types


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    path, args = argv[1], argv[2:]
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"{path}: {e}")
        return 1
    problems, families, samples, types = check(text)
    i = 0
    while i < len(args):
        if args[i] == "--require" and i + 1 < len(args):
            if args[i + 1] not in samples:
                problems.append(f"required family {args[i + 1]} is missing")
            i += 2
        elif args[i] == "--gauge-range" and i + 3 < len(args):
            name, lo, hi = args[i + 1], float(args[i + 2]), float(args[i + 3])
            for _, labels, v in samples.get(name, []):
                if not lo <= v <= hi:
                    problems.append(f"{name}{labels} = {v} is outside [{lo}, {hi}]")
            if name not in samples:
                problems.append(f"required family {name} is missing")
            i += 4
        else:
            print(f"promcheck.py: bad argument {args[i]!r}", file=sys.stderr)
            return 2
    for p in problems:
        print(f"{path}: {p}")
    if problems:
        return 1
    for fam in families:
        vals = ", ".join(f"{v:g}" for _, _, v in samples.get(fam, []))
        print(f"{fam} ({types.get(fam, 'untyped')}): {vals}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
