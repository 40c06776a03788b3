"""A small PDF 1.4 writer: pages of text in Helvetica, for records people print and sign (no dependency).

`document(title, lines)` lays out `title` in bold, then `lines` one under the other on A4 pages,
wrapping those too long for the page at spaces (a word longer than a line is cut), and numbers the
pages at their foot ("page k/n"). A line that begins with "# " is a heading, in bold; an empty
line is a blank line.

The fonts are two of the standard 14 every reader has (Helvetica, Helvetica-Bold), not embedded,
with WinAnsiEncoding: the text is encoded in Windows-1252, which has French's letters (é è à ç ô
œ), its quotes (« »), the degree and the euro signs. A character Windows-1252 lacks comes out as
'?'; control characters as spaces. The same inputs give the same bytes (no creation date).
"""

from __future__ import annotations

import unicodedata

__all__ = ["document"]

# A4 in points, and the text block's margins.
PAGE_WIDTH, PAGE_HEIGHT = 595, 842
MARGIN = 56  # 2 cm
TITLE_SIZE, HEADING_SIZE, TEXT_SIZE, FOOT_SIZE = 14, 11, 10, 8
LEADING = 13  # points from one text line to the next
TITLE_GAP = 10  # points under the title
FOOT_Y = 30  # the page number's baseline
REGULAR, BOLD = "F1", "F2"

# Adobe's widths of Helvetica and Helvetica-Bold (thousandths of the size) for printable ASCII,
# 32 (space) to 126 (~), in WinAnsiEncoding's order (39 is quotesingle, 96 grave).
_ASCII_WIDTHS = {
    REGULAR: (
        278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
        556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
        1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
        667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
        333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
        556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
    ),
    BOLD: (
        278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278,
        556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611,
        975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778,
        667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556,
        333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611,
        611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
    ),
}  # fmt: skip
# Beyond ASCII: an accented letter is as wide as its letter; these are not letters with accents;
# anything else is taken wide (a line is wrapped a little early rather than overflowing).
_OTHER_WIDTHS = {
    "«": 556, "»": 556, "°": 400, "€": 556, "\u2018": 278, "\u2019": 278, "\u201c": 500, "\u201d": 500,
    "…": 1000, "\u2013": 556, "\u2014": 1000, "•": 350, "Œ": 1000, "œ": 944, "Æ": 1000, "æ": 889, "ß": 611,
    "\u00d7": 584, "\u00a0": 278, "§": 556, "©": 737, "®": 737, "±": 584, "µ": 611,
}  # fmt: skip
_WIDE = 1000
# Spaces Windows-1252 lacks (French puts narrow no-break spaces before ; : ! ? and inside « »).
_SPACES = dict.fromkeys(map(ord, "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f"), " ")


def document(title: str, lines: list[str]) -> bytes:
    """A PDF of `title` then `lines` (see the module's doc), as many A4 pages as they need."""
    width = PAGE_WIDTH - 2 * MARGIN
    placed: list[tuple[str, int, str]] = []  # (font, size, text) of every printed line
    for line in lines:
        text = _clean(line)
        if text.startswith("# "):
            placed += [(BOLD, HEADING_SIZE, part) for part in _wrap(text[2:].strip(), BOLD, HEADING_SIZE, width)]
        else:
            placed += [(REGULAR, TEXT_SIZE, part) for part in _wrap(text, REGULAR, TEXT_SIZE, width)]
    heading = _wrap(_clean(title), BOLD, TITLE_SIZE, width)
    top = PAGE_HEIGHT - MARGIN
    bottom = MARGIN
    per_page = (top - bottom) // LEADING + 1
    first_page = max(1, (top - bottom - len(heading) * (TITLE_SIZE + 4) - TITLE_GAP) // LEADING + 1)
    pages = [placed[:first_page]]
    rest = placed[first_page:]
    while rest:
        pages.append(rest[:per_page])
        rest = rest[per_page:]
    streams = []
    for number, page in enumerate(pages, 1):
        ops, y = [], top
        if number == 1:
            for part in heading:
                ops.append(_text(BOLD, TITLE_SIZE, MARGIN, y, part))
                y -= TITLE_SIZE + 4
            y -= TITLE_GAP
        for font, size, part in page:
            if part:
                ops.append(_text(font, size, MARGIN, y, part))
            y -= LEADING
        foot = f"page {number}/{len(pages)}"
        ops.append(_text(REGULAR, FOOT_SIZE, PAGE_WIDTH - MARGIN - _width(foot, REGULAR, FOOT_SIZE), FOOT_Y, foot))
        streams.append("\n".join(ops).encode("ascii") + b"\n")
    return _assemble(title, streams)


def _clean(text: str) -> str:
    """`text` composed (é, not e and an accent), without control characters or spaces Windows-1252 lacks."""
    text = unicodedata.normalize("NFC", text).translate(_SPACES).replace("\t", "    ")
    return "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)


def _char_width(char: str, font: str) -> int:
    code = ord(char)
    if 32 <= code <= 126:
        return _ASCII_WIDTHS[font][code - 32]
    if char in _OTHER_WIDTHS:
        return _OTHER_WIDTHS[char]
    base = unicodedata.normalize("NFD", char)[0]
    if base != char and 32 <= ord(base) <= 126:
        return _ASCII_WIDTHS[font][ord(base) - 32]
    return _WIDE


def _width(text: str, font: str, size: int) -> float:
    return sum(_char_width(c, font) for c in text) * size / 1000


def _wrap(text: str, font: str, size: int, width: float) -> list[str]:
    """`text` cut into lines at most `width` points wide: at spaces, or inside a word too long for a line."""
    text = text.rstrip()
    if not text:
        return [""]
    indent = text[: len(text) - len(text.lstrip(" "))]  # continuation lines keep the line's indent
    out: list[str] = []
    current = ""
    for word in text.lstrip(" ").split(" "):
        candidate = f"{current} {word}" if current else indent + word
        if _width(candidate, font, size) <= width:
            current = candidate
            continue
        if current:
            out.append(current)
        current = indent + word
        while _width(current, font, size) > width and len(current) > len(indent) + 1:
            cut = len(current) - 1
            while cut > len(indent) + 1 and _width(current[:cut], font, size) > width:
                cut -= 1
            out.append(current[:cut])
            current = indent + current[cut:]
    out.append(current)
    return out


def _literal(text: str) -> str:
    """`text` as a PDF literal string in WinAnsiEncoding: ( ) \\ escaped, bytes outside ASCII in octal."""
    out = []
    for byte in text.encode("cp1252", errors="replace"):
        if byte in b"()\\":
            out.append("\\" + chr(byte))
        elif 32 <= byte <= 126:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return "(" + "".join(out) + ")"


def _text(font: str, size: int, x: float, y: float, text: str) -> str:
    return f"BT /{font} {size} Tf 1 0 0 1 {x:.2f} {y:.2f} Tm {_literal(text)} Tj ET"


def _info_string(text: str) -> str:
    """A text string of the document's information dictionary: UTF-16BE with its byte order mark, in hex."""
    return "<FEFF" + text.encode("utf-16-be").hex().upper() + ">"


def _assemble(title: str, streams: list[bytes]) -> bytes:
    """The file: header, objects, cross-reference table with each object's byte offset, trailer."""
    count = len(streams)
    # 1 catalog, 2 page tree, 3 and 4 fonts, 5 information; then each page and its content stream.
    page_ids = [6 + 2 * n for n in range(count)]
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {count} >>".encode("ascii"),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        f"<< /Title {_info_string(_clean(title))} /Producer (halfbridge) >>".encode("ascii"),
    ]
    for page_id, stream in zip(page_ids, streams, strict=True):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}] "
            f"/Resources << /Font << /{REGULAR} 3 0 R /{BOLD} 4 0 R >> >> /Contents {page_id + 1} 0 R >>".encode(
                "ascii"
            )
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"endstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")  # the second line says: binary file
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 5 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
