"""The PDF writer: what a reader shows (pdftotext, pdfinfo) is the text given, accents included, on numbered pages."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from halfbridge.pdf import document

needs_poppler = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="pdftotext and pdfinfo: Debian package poppler-utils (make deps)"
)
pytestmark = needs_poppler

FRENCH = "Procès-verbal : « images extraites » à 10:15:00, 20 °C, coût 12 € ; ça, où, être, Noël, œuvre, Ça va ?"


def text_of(data: bytes, tmp_path: Path, layout: bool = False) -> str:
    path = tmp_path / "out.pdf"
    path.write_bytes(data)
    done = subprocess.run(
        ["pdftotext", *(["-layout"] if layout else []), str(path), "-"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stderr == "", done.stderr  # no syntax error, no broken cross-reference table
    return done.stdout


def info_of(data: bytes, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "info.pdf"
    path.write_bytes(data)
    done = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, timeout=30, check=True)
    assert done.stderr == "", done.stderr
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in done.stdout.splitlines())}


def test_french_text_comes_back_with_its_accents(tmp_path):
    data = document("PROCÈS-VERBAL D'EXTRACTION D'IMAGES", [FRENCH, "", "# Empreintes SHA-256 : déjà vérifiées"])
    shown = text_of(data, tmp_path)
    assert "PROCÈS-VERBAL D'EXTRACTION D'IMAGES" in shown
    assert FRENCH in shown
    assert "Empreintes SHA-256 : déjà vérifiées" in shown
    assert "# " not in shown  # a heading's mark is not printed
    info = info_of(data, tmp_path)
    assert info["Title"] == "PROCÈS-VERBAL D'EXTRACTION D'IMAGES"
    assert info["Page size"].startswith("595 x 842")  # A4
    assert info["PDF version"] == "1.4"


def test_decomposed_accents_are_composed_and_what_windows_1252_lacks_is_a_question_mark(tmp_path):
    shown = text_of(document("t", ["cafe\u0301 Ω 日本 \u202f«\u202fok\u202f»"]), tmp_path)
    assert "café ? ?? « ok »" in shown


def test_parentheses_and_backslashes_are_escaped(tmp_path):
    line = r"(a) \b) (( \\ ) end"
    assert line in text_of(document("(title) \\", [line]), tmp_path)


def test_control_characters_do_not_break_the_page(tmp_path):
    shown = text_of(document("t", ["a\x00b\x1b[31mc\rd\ne", "tab\there"]), tmp_path)
    assert "a b [31mc d e" in shown
    assert "tab here" in shown


def test_long_lines_are_wrapped_inside_the_page_and_keep_every_word(tmp_path):
    words = [f"mot{n}é" for n in range(200)]
    data = document("t", ["    " + " ".join(words), "x" * 400])
    shown = text_of(data, tmp_path)
    assert shown.split() == ["t", *words, *re.findall(r"x+", shown), "page", "1/1"]  # every word, in order
    assert "".join(re.findall(r"x+", shown)) == "x" * 400  # a word too long for a line is cut, not lost
    assert len([line for line in shown.splitlines() if line.strip()]) >= 6
    # Nothing is drawn past the right margin: every text line starts at the left one and fits the page.
    boxes = bounding_boxes(data, tmp_path)
    assert boxes and all(x_min >= 56 and x_max <= 595 - 56 + 1 for x_min, x_max in boxes)


def bounding_boxes(data: bytes, tmp_path: Path) -> list[tuple[float, float]]:
    """Left and right of each word pdftotext finds (points)."""
    path = tmp_path / "boxes.pdf"
    path.write_bytes(data)
    out = subprocess.run(
        ["pdftotext", "-bbox", str(path), "-"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    found = re.findall(r'<word xMin="([\d.]+)" yMin="[\d.]+" xMax="([\d.]+)"', out)
    # The page numbers sit at the foot on the right; the words are the text's.
    return [(float(a), float(b)) for a, b in found]


def test_as_many_pages_as_needed_each_numbered(tmp_path):
    lines = [f"ligne {n:03d}" for n in range(150)]
    data = document("Titre", lines)
    assert info_of(data, tmp_path)["Pages"] == "3"
    shown = text_of(data, tmp_path)
    for page in range(1, 4):
        assert f"page {page}/3" in shown
    assert [int(n) for n in re.findall(r"ligne (\d+)", shown)] == list(range(150))
    pages = shown.split("\f")
    assert "Titre" in pages[0] and "Titre" not in pages[1]


def test_an_empty_document_is_one_page(tmp_path):
    data = document("Seul le titre", [])
    assert info_of(data, tmp_path)["Pages"] == "1"
    assert "page 1/1" in text_of(data, tmp_path)


def test_the_cross_reference_table_gives_each_object_its_offset():
    data = document("t", [f"l {n}" for n in range(200)])
    start = int(re.search(rb"startxref\n(\d+)\n%%EOF\n\Z", data)[1])
    assert data[start:].startswith(b"xref\n0 ")
    count = int(data[start:].split(b"\n")[1].split()[1])
    entries = data[start:].split(b"\n", 2)[2][: 20 * count]
    assert entries[:20] == b"0000000000 65535 f \n"
    for number in range(1, count):
        entry = entries[20 * number : 20 * (number + 1)]
        assert entry.endswith(b" 00000 n \n")
        offset = int(entry[:10])
        assert data[offset:].startswith(b"%d 0 obj\n" % number)
    for length, stream in re.findall(rb"<< /Length (\d+) >>\nstream\n(.*?)endstream", data, re.S):
        assert int(length) == len(stream)


def test_the_same_inputs_give_the_same_bytes():
    assert document("t", [FRENCH]) == document("t", [FRENCH])
