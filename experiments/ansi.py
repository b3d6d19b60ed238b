"""Terminal output to HTML: ANSI colour codes become spans, everything else is escaped.

Logs arrive in chunks, so the colour state at the end of one chunk is carried
into the next (``state``), and an escape sequence cut in half by the chunk
boundary is held back (``held``) to be read again with the next chunk.
"""

import re
from dataclasses import dataclass, field

from django.utils.html import escape

# CSI sequences: ESC [ params final-byte. Only "m" (SGR) is rendered; the rest is dropped.
CSI_RE = re.compile(r"\x1b\[([0-9;?]*)([@-~])")
# Other escapes (OSC titles, charset switches) are dropped whole.
OTHER_ESC_RE = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][A-Za-z0-9]|\x1b[=>78c]")
PARTIAL_TAIL_RE = re.compile(r"\x1b(\[[0-9;?]*|\][^\x07]*|[()])?$")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

COLOURS = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")


@dataclass
class SgrState:
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    fg: str = ""
    bg: str = ""
    _extra: list = field(default_factory=list)

    def apply(self, params):
        codes = [int(p) if p.isdigit() else 0 for p in (params.split(";") if params else ["0"])]
        i = 0
        while i < len(codes):
            code = codes[i]
            if code == 0:
                self.__init__()
            elif code == 1:
                self.bold = True
            elif code == 2:
                self.dim = True
            elif code == 3:
                self.italic = True
            elif code == 4:
                self.underline = True
            elif code == 22:
                self.bold = self.dim = False
            elif code == 23:
                self.italic = False
            elif code == 24:
                self.underline = False
            elif 30 <= code <= 37:
                self.fg = COLOURS[code - 30]
            elif 90 <= code <= 97:
                self.fg = "bright-" + COLOURS[code - 90]
            elif code == 39:
                self.fg = ""
            elif 40 <= code <= 47:
                self.bg = COLOURS[code - 40]
            elif 100 <= code <= 107:
                self.bg = "bright-" + COLOURS[code - 100]
            elif code == 49:
                self.bg = ""
            elif code in (38, 48) and i + 1 < len(codes):
                # 256-colour and true colour: skip their arguments, keep the text plain.
                i += 2 if codes[i + 1] == 5 else 4
            i += 1

    def classes(self):
        names = []
        if self.bold:
            names.append("ansi-bold")
        if self.dim:
            names.append("ansi-dim")
        if self.italic:
            names.append("ansi-italic")
        if self.underline:
            names.append("ansi-underline")
        if self.fg:
            names.append(f"ansi-fg-{self.fg}")
        if self.bg:
            names.append(f"ansi-bg-{self.bg}")
        return " ".join(names)

    def encode(self):
        """The state as SGR parameters, to carry to the next chunk."""
        codes = []
        codes += ["1"] if self.bold else []
        codes += ["2"] if self.dim else []
        codes += ["3"] if self.italic else []
        codes += ["4"] if self.underline else []
        if self.fg:
            base = 90 if self.fg.startswith("bright-") else 30
            codes.append(str(base + COLOURS.index(self.fg.removeprefix("bright-"))))
        if self.bg:
            base = 100 if self.bg.startswith("bright-") else 40
            codes.append(str(base + COLOURS.index(self.bg.removeprefix("bright-"))))
        return ";".join(codes)

    @classmethod
    def decode(cls, text):
        state = cls()
        if text and re.fullmatch(r"[0-9;]{1,60}", text):
            state.apply(text)
        return state


@dataclass
class Rendered:
    html: str
    state: str  # SGR parameters in force at the end
    held: str  # a cut-off escape sequence at the end, not rendered


def ansi_to_html(text, state=""):
    """Render ``text`` (with ANSI codes) as safe HTML, starting in colour ``state``."""
    held = ""
    tail = PARTIAL_TAIL_RE.search(text)
    if tail:
        held = tail.group(0)
        text = text[: tail.start()]
    text = OTHER_ESC_RE.sub("", text)
    sgr = SgrState.decode(state)
    out = []
    pos = 0

    def emit(segment):
        if not segment:
            return
        segment = CONTROL_RE.sub("", segment)
        classes = sgr.classes()
        if classes:
            out.append(f'<span class="{classes}">{escape(segment)}</span>')
        else:
            out.append(escape(segment))

    for match in CSI_RE.finditer(text):
        emit(text[pos : match.start()])
        if match.group(2) == "m":
            sgr.apply(match.group(1))
        pos = match.end()
    emit(text[pos:])
    return Rendered(html="".join(out), state=sgr.encode(), held=held)
