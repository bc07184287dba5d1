#!/usr/bin/env python3
"""Extract the 1000 ImageNet class names from @tensorflow-models/mobilenet's
dist/imagenet_classes.js into labels.txt (one per line, index order).

The JS file is parsed as text, never executed. Usage: labels.py IMAGENET_CLASSES_JS OUT
"""

import re
import sys

ENTRY = re.compile(r"^\s*(\d+):\s*((?:'(?:[^'\\]|\\.)*'\s*\+?\s*)+),?\s*$", re.M)
PIECE = re.compile(r"'((?:[^'\\]|\\.)*)'")


def unescape(s):
    return re.sub(r"\\(.)", r"\1", s)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        text = f.read()
    body = text.split("exports.IMAGENET_CLASSES = {", 1)
    if len(body) != 2:
        raise SystemExit("IMAGENET_CLASSES object not found")
    labels = {}
    for m in ENTRY.finditer(body[1].split("};", 1)[0]):
        labels[int(m.group(1))] = "".join(unescape(p) for p in PIECE.findall(m.group(2)))
    if sorted(labels) != list(range(1000)):
        raise SystemExit(f"expected classes 0..999, found {len(labels)}")
    for i, label in labels.items():
        if not label or "\n" in label:
            raise SystemExit(f"class {i} has an unusable name {label!r}")
    with open(argv[2], "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(labels[i] + "\n" for i in range(1000)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
