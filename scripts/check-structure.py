#!/usr/bin/env python3
"""Structure checks for the Rust crates of this workspace (standard library only).

For every crate `crates/<name>/src`:

1. Module dependency cycles. A module depends on another when it names it through a
   `crate::...` path (in a `use` or anywhere in the code; comments, doc comments and
   string literals are ignored), or through `super::`/`self::` paths that resolve to
   another module. The graph is checked at two granularities:
   * between the crate's top-level modules (a file and all of its descendants count
     as one module: `task/mod.rs` and `task/pubsub.rs` are both `task`);
   * inside every directory module, between its direct children (each again with its
     descendants). A child using its parent's own items is fine and not an edge.
   Every cycle (strongly connected component) is printed with one example path.
2. File size. Every non-test `.rs` file over the limit (default 700 lines) is
   reported. Test code does not count: files named `tests.rs`, files under a `tests/`
   directory, and a trailing `#[cfg(test)] mod tests { ... }` block.

Exits 1 when anything is reported, else 0.

    python3 scripts/check-structure.py                 # every crate
    python3 scripts/check-structure.py --crate server  # crates/server only
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DEFAULT_MAX_LINES = 700

# --------------------------------------------------------------------------- lexing


def strip_code(src: str) -> str:
    """The source with comments and string/char literal contents blanked out.

    Line structure is kept (every newline survives), so line numbers and brace
    matching still work on the result.
    """
    out: list[str] = []
    i, n = 0, len(src)

    def blank(text: str) -> str:
        return "".join(c if c == "\n" else " " for c in text)

    while i < n:
        c = src[i]
        nxt = src[i + 1] if i + 1 < n else ""
        # Line comment (also doc comments).
        if c == "/" and nxt == "/":
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(src[i:j]))
            i = j
            continue
        # Block comment (nested).
        if c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth += 1
                    j += 2
                elif src.startswith("*/", j):
                    depth -= 1
                    j += 2
                else:
                    j += 1
            out.append(blank(src[i:j]))
            i = j
            continue
        # Raw strings: r"..", r#".."#, br"..", cr"..".
        m = re.match(r'(?:b|c)?r(#*)"', src[i:i + 300])
        if m and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            hashes = m.group(1)
            end = src.find('"' + hashes, i + m.end())
            end = n if end < 0 else end + 1 + len(hashes)
            out.append('""' + blank(src[i + 2:end]))
            i = end
            continue
        # Strings: "..", b"..", c"..".
        if c == '"' or (c in "bc" and nxt == '"' and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_"))):
            j = i + (1 if c == '"' else 2)
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
            out.append('""' + blank(src[i + 2:j]))
            i = j
            continue
        # Char literals ('x', '\n', '\u{..}', b'x'); a lifetime has no closing quote.
        if c == "'":
            m = re.match(r"'(?:\\(?:u\{[0-9a-fA-F_]*\}|x[0-9a-fA-F]{2}|.)|[^\\'\n])'", src[i:i + 16])
            if m:
                out.append("' '" + blank(src[i + 3:i + m.end()]))
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------- modules


def module_of(path: Path, src_dir: Path) -> tuple[str, ...]:
    """Module path of a source file (`()` for the crate root)."""
    rel = path.relative_to(src_dir).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    if len(parts) == 1 and parts[0] in ("lib", "main"):
        return ()
    return tuple(parts)


USE_RE = re.compile(r"\buse\s+([^;]*);", re.S)
PATH_RE = re.compile(r"(?<![\w$])(crate|super|self)((?:\s*::\s*(?:r#)?[A-Za-z_]\w*)+)")


def expand_use_tree(tree: str) -> list[list[str]]:
    """`a::{b, c::{d, e as f}, self}` -> [[a, b], [a, c, d], [a, c, e], [a]]."""
    toks = re.findall(r"::|[{},*]|(?:r#)?[A-Za-z_]\w*", tree)
    pos = 0

    def parse(prefix: list[str]) -> list[list[str]]:
        # One use tree: `seg::seg::(leaf | * | {tree, ...})`, after `prefix`.
        nonlocal pos
        segs = list(prefix)
        while pos < len(toks):
            t = toks[pos]
            if t == "{":
                pos += 1
                paths: list[list[str]] = []
                while pos < len(toks) and toks[pos] != "}":
                    if toks[pos] == ",":
                        pos += 1
                        continue
                    paths.extend(parse(segs))
                pos += 1  # the closing brace
                return paths
            if t == "*":
                pos += 1
                return [segs]
            if t in ("::",):
                pos += 1
                continue
            if t in (",", "}"):
                return [segs]
            pos += 1
            if t == "as":
                pos += 1  # the alias
                continue
            if t != "self":
                segs.append(t.removeprefix("r#"))
        return [segs]

    result: list[list[str]] = []
    while pos < len(toks):
        if toks[pos] == ",":
            pos += 1
            continue
        result.extend(parse([]))
    return [p for p in result if p]


def references(code: str) -> list[list[str]]:
    """Every intra-crate path the (stripped) code names, as segment lists."""
    refs: list[list[str]] = []
    spans: list[tuple[int, int]] = []
    for m in USE_RE.finditer(code):
        tree = m.group(1)
        if re.match(r"\s*(::\s*)?(crate|super|self)\b", tree):
            refs.extend(expand_use_tree(tree))
            spans.append(m.span())
    for m in PATH_RE.finditer(code):
        if any(a <= m.start() < b for a, b in spans):
            continue
        segs = [m.group(1)] + [s.strip().removeprefix("r#") for s in m.group(2).split("::") if s.strip()]
        refs.append(segs)
    return refs


def resolve(segs: list[str], here: tuple[str, ...], modules: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The module a path lands in (the longest known module prefix), or None."""
    head, rest = segs[0], segs[1:]
    if head == "crate":
        base: list[str] = []
    elif head in ("super", "self"):
        base = list(here)
        rest = segs
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                if not base:
                    return None
                base.pop()
            rest = rest[1:]
    else:
        return None
    cur = tuple(base)
    for s in rest:
        if cur + (s,) in modules:
            cur = cur + (s,)
        else:
            break
    return cur


# --------------------------------------------------------------------------- graphs


def sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    result.append(sorted(comp))
    return result


def example_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One cycle through the first node of a component (BFS back to it)."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    queue = [start]
    seen = {start}
    while queue:
        node = queue.pop(0)
        for w in sorted(graph.get(node, ())):
            if w not in members:
                continue
            if w == start:
                path = [node]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w not in seen:
                seen.add(w)
                prev[w] = node
                queue.append(w)
    return comp


# --------------------------------------------------------------------------- checks


def name(mod: tuple[str, ...]) -> str:
    return "::".join(mod) if mod else "crate"


def check_crate(crate_dir: Path, max_lines: int) -> tuple[list[str], list[str], dict[str, set[str]]]:
    src_dir = crate_dir / "src"
    files = sorted(p for p in src_dir.rglob("*.rs") if "bin" not in p.relative_to(src_dir).parts[:1])
    modules = {module_of(p, src_dir) for p in files}
    codes = {p: strip_code(p.read_text(encoding="utf-8")) for p in files}

    # Edges between modules (full paths).
    edges: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    for p in files:
        here = module_of(p, src_dir)
        # `self::x` / `super::x` are relative to the file's module (the children of
        # `foo.rs` live in `foo/`, like those of `foo/mod.rs`).
        for segs in references(codes[p]):
            dst = resolve(segs, here, modules)
            if dst is not None and dst != here:
                edges.add((here, dst))

    cycles: list[str] = []

    def check_level(parent: tuple[str, ...]) -> dict[str, set[str]]:
        depth = len(parent)
        graph: dict[str, set[str]] = {}
        for m in modules:
            if len(m) > depth and m[:depth] == parent:
                graph.setdefault(m[depth], set())
        for src, dst in edges:
            if len(src) > depth and len(dst) > depth and src[:depth] == parent and dst[:depth] == parent:
                a, b = src[depth], dst[depth]
                if a != b:
                    graph.setdefault(a, set()).add(b)
        for comp in sccs(graph):
            where = f"{crate_dir.name}: " + ("top level" if not parent else f"inside `{name(parent)}`")
            cyc = " -> ".join(example_cycle(graph, comp))
            cycles.append(f"{where}: cycle among {{{', '.join(comp)}}}, e.g. {cyc}")
        return graph

    top = check_level(())
    for m in sorted(modules):
        if m and any(len(o) == len(m) + 1 and o[:len(m)] == m for o in modules):
            check_level(m)

    # File sizes.
    too_long: list[str] = []
    for p in files:
        rel = p.relative_to(src_dir)
        if p.name == "tests.rs" or "tests" in rel.parts[:-1]:
            continue
        n = counted_lines(codes[p])
        if n > max_lines:
            too_long.append(f"{crate_dir.name}: {p.relative_to(crate_dir.parent.parent)}: {n} lines (limit {max_lines})")
    return cycles, too_long, top


TEST_MOD_RE = re.compile(r"^#\[cfg\(test\)\]\s*\n(?:\s*#\[[^\n]*\]\s*\n)*\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+tests\s*\{", re.M)


def counted_lines(code: str) -> int:
    """Lines of a file, not counting a trailing `#[cfg(test)] mod tests { ... }`."""
    total = code.count("\n") + (0 if code.endswith("\n") or not code else 1)
    for m in TEST_MOD_RE.finditer(code):
        depth, j = 0, m.end() - 1
        while j < len(code):
            if code[j] == "{":
                depth += 1
            elif code[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        if code[j + 1:].strip() == "":
            return code[:m.start()].rstrip().count("\n") + 1
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=Path(__file__).resolve().parent.parent, type=Path, help="workspace root")
    ap.add_argument("--crate", action="append", default=[], help="only check crates/<CRATE> (repeatable)")
    ap.add_argument("--max-lines", type=int, default=DEFAULT_MAX_LINES)
    ap.add_argument("--graph", action="store_true", help="also print each crate's top-level module graph")
    args = ap.parse_args()

    crate_dirs = sorted(d for d in (args.root / "crates").iterdir() if (d / "src").is_dir())
    if args.crate:
        crate_dirs = [d for d in crate_dirs if d.name in args.crate]
        if not crate_dirs:
            print(f"no such crate: {', '.join(args.crate)}", file=sys.stderr)
            return 2

    all_cycles: list[str] = []
    all_long: list[str] = []
    failed: list[str] = []
    for d in crate_dirs:
        cycles, long_files, top = check_crate(d, args.max_lines)
        all_cycles += cycles
        all_long += long_files
        if cycles or long_files:
            failed.append(d.name)
        if args.graph:
            print(f"{d.name} (top-level module graph):")
            for m in sorted(top):
                deps = ", ".join(sorted(top[m])) or "-"
                print(f"  {m} -> {deps}")

    if all_cycles:
        print(f"Module cycles ({len(all_cycles)}):")
        for c in all_cycles:
            print(f"  {c}")
    if all_long:
        print(f"Files over {args.max_lines} lines, tests excluded ({len(all_long)}):")
        for f in all_long:
            print(f"  {f}")
    ok = [d.name for d in crate_dirs if d.name not in failed]
    print(
        f"check-structure: {len(crate_dirs)} crates, {len(all_cycles)} cycles, "
        f"{len(all_long)} long files; ok: {', '.join(ok) or '-'}; "
        f"failing: {', '.join(failed) or '-'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
