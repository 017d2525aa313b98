#!/usr/bin/env python3
"""A flame graph (SVG) from `perf script` output, for docs/.

    perf record -F 997 -g -p <pid> -- sleep 10
    perf script | crates/bench/perf/flamegraph.py "title" > docs/flame.svg

Each sample's stack is read root first; equal prefixes merge; a frame's
width is its share of the samples. Frames under 0.5 % are left out. Also
prints the 25 heaviest leaf-inclusive frames ("self + children") to stderr.
"""

import collections
import html
import re
import sys
import zlib

WIDTH, ROW, FONT = 1200.0, 16, 11


def stacks(lines):
    frames = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield list(reversed(frames))
                frames = []
            continue
        if line.startswith((" ", "\t")):
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                sym = re.sub(r"\+0x[0-9a-f]+$", "", parts[1].rsplit(" (", 1)[0])
                # Rust's symbols end in a hash: leave it out.
                sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
                frames.append(sym if sym != "[unknown]" else "?")
    if frames:
        yield list(reversed(frames))


def main():
    title = sys.argv[1] if len(sys.argv) > 1 else "perf"
    root = {"n": 0, "kids": {}}
    inclusive = collections.Counter()
    total = 0
    for stack in stacks(sys.stdin):
        total += 1
        node = root
        node["n"] += 1
        for frame in stack:
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += 1
        for frame in set(stack):
            inclusive[frame] += 1
    if total == 0:
        sys.exit("no samples in the input")
    out = []

    def draw(node, name, x, depth):
        w = WIDTH * node["n"] / total
        if w < WIDTH * 0.005:
            return
        y = 40 + depth * ROW
        hue = zlib.crc32(name.encode()) % 60
        # Rust's generic frames run to kilobytes: the tooltip keeps the head.
        label = html.escape(name if len(name) <= 240 else name[:237] + "...")
        pct = 100.0 * node["n"] / total
        out.append(
            f'<g><title>{label} ({pct:.1f}%)</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 1}" fill="hsl({hue},80%,60%)"/>'
        )
        chars = int(w / (FONT * 0.6))
        if chars > 3:
            text = name if len(name) <= chars else name[: chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + ROW - 4}">{html.escape(text)}</text>')
        out.append("</g>")
        cx = x
        for kid_name, kid in sorted(node["kids"].items()):
            draw(kid, kid_name, cx, depth + 1)
            cx += WIDTH * kid["n"] / total

    depth = [0]

    def deepest(node, d):
        depth[0] = max(depth[0], d)
        for kid in node["kids"].values():
            if kid["n"] / total >= 0.005:
                deepest(kid, d + 1)

    deepest(root, 0)
    draw(root, f"all ({total} samples)", 10.0, 0)
    height = 60 + (depth[0] + 1) * ROW
    print(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH + 20:.0f}" height="{height}" '
        f'font-family="monospace" font-size="{FONT}">'
    )
    print('<rect width="100%" height="100%" fill="white"/>')
    print(f'<text x="10" y="24" font-size="15" font-family="sans-serif">{html.escape(title)}</text>')
    print("\n".join(out))
    print("</svg>")
    for frame, n in inclusive.most_common(25):
        print(f"{100.0 * n / total:6.1f}%  {frame}", file=sys.stderr)


if __name__ == "__main__":
    main()
