"""Reports the cells of an executed GoNB notebook whose program failed.

GoNB answers a cell whose program panics or exits non-zero as if it had succeeded: it only
writes "exit status N" (or "signal: ...") to the cell's stderr. Jupyter's runner therefore does
not stop there, and this check finds such cells, plus any cell with an error output.

Usage: python3 notebook_errors.py EXECUTED.ipynb   (exit status 1 if a cell failed)
"""
import html as htmllib
import json
import re
import sys

FAILED = re.compile(r"^(\^C\n)?(exit status \d+|signal: .+)$")


def html_text(html):
    """Plain text of GoNB's HTML error report: no styles, tags, entities or blank runs."""
    html = re.sub(r"(?s)<style.*?</style>", "", html)
    text = htmllib.unescape(re.sub(r"<[^>]+>", "", html))
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())


def cell_failure(cell):
    """Returns the failure text of a code cell, or None."""
    stderr, error = "", None
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "error":
            error = "%s: %s\n%s" % (out.get("ename", ""), out.get("evalue", ""), "\n".join(out.get("traceback", [])))
        elif kind == "stream" and out.get("name") == "stderr":
            text = out.get("text", "")
            stderr += "".join(text) if isinstance(text, list) else text
        elif kind in ("display_data", "execute_result"):
            # GoNB shows compilation errors as HTML; keep their text.
            html = out.get("data", {}).get("text/html")
            if html is not None and error is None:
                html = "".join(html) if isinstance(html, list) else html
                stderr += html_text(html) + "\n"
    if error is not None:
        return stderr + error
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines and FAILED.match(lines[-1]):
        return stderr
    return None


def main(path):
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    failed = 0
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        failure = cell_failure(cell)
        if failure is None:
            continue
        failed += 1
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        print("cell %d (id %s) failed:" % (i, cell.get("id", "?")))
        print("  --- source ---")
        for line in source.splitlines()[:40]:
            print("  " + line)
        print("  --- error ---")
        for line in failure.splitlines()[-60:]:
            print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
