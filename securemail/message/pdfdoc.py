"""Plain A4 documents for people: a title, headings and paragraphs in the PDF core fonts.

Owns the one way the gateway writes a readable PDF (the practice's "voor het dossier" export,
the patient's disclosure report "wie heeft mijn gegevens ingezien").

Invariants: every text passes ``latin1`` (the core fonts cover latin-1, all of Dutch; any
other character becomes "?", so a name never makes the export fail); the creation date is
the gateway's clock, never the machine's, so a document made under a test clock says so.
"""

from __future__ import annotations

from datetime import datetime

from fpdf import FPDF


def latin1(text: str) -> str:
    """Text the core fonts can draw: curly quotes straightened, the rest of non-latin-1 "?"."""
    return text.replace("’", "'").encode("latin-1", "replace").decode("latin-1")


class Document:
    """An A4 portrait document: ``heading``, ``body`` (paragraphs, one per line) and
    ``output`` to bytes."""

    def __init__(self, title: str, created: datetime, *, compress: bool = True) -> None:
        self.pdf = FPDF(format="A4")
        self.pdf.set_compression(compress)  # off only where a test reads the raw stream
        self.pdf.set_creation_date(created)
        self.pdf.set_title(latin1(title))
        self.pdf.set_auto_page_break(auto=True, margin=12)
        self.pdf.add_page()

    def heading(self, text: str, size: int = 13) -> None:
        self.pdf.set_font("Helvetica", "B", size)
        self.pdf.multi_cell(0, size * 0.6, latin1(text), new_x="LMARGIN", new_y="NEXT")
        self.pdf.set_font("Helvetica", "", 9)

    def body(self, text: str) -> None:
        self.pdf.set_font("Helvetica", "", 9)
        for line in text.splitlines() or [" "]:
            self.pdf.multi_cell(0, 4.5, latin1(line) or " ", new_x="LMARGIN", new_y="NEXT")

    def gap(self, mm: float = 2) -> None:
        self.pdf.ln(mm)

    def output(self) -> bytes:
        return bytes(self.pdf.output())
