"""Text that cannot be read on the screen it is drawn on: contrast of every drawn cell (test helper).

The whole screen as the terminal gets it (the compositor's output, every widget's
colours resolved against the theme), so a colour meant for bars used for text, or a
badge whose text takes the page's background, shows up whatever widget drew it.
"""

from __future__ import annotations

from rich.color import Color
from textual.app import App
from textual.screen import ModalScreen

# WCAG's 3:1 for large text less a margin: Textual's own footer keys (2.9:1 in textual-light)
# and the accent on its panel (2.8:1) pass; the theme's bar colours used for text (1.3-1.8:1
# on light backgrounds) do not.
FLOOR = 2.5
# Glyphs whose colour is the picture (bars, rules, scrollbars, radio dots), not letters to read.
GRAPHICS = set(" ▁▂▃▄▅▆▇█░▏▎▍▌▋▊▉▐▔▕▀▄─│┤├╭╮╰╯━┃▶▸▾●")


def _luminance(color: Color) -> float:
    def channel(value: int) -> float:
        v = value / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = color.get_truecolor()
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(fg: Color, bg: Color) -> float:
    high, low = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def illegible_text(app: App[object], floor: float = FLOOR) -> list[tuple[int, str, float]]:
    """(line, text, contrast) of every piece of text under ``floor``; a modal: its own dialog only."""
    screen = app.screen
    region = screen.children[0].region if isinstance(screen, ModalScreen) and screen.children else None
    update = screen._compositor.render_full_update()
    found: list[tuple[int, str, float]] = []
    for y, line in enumerate(update.strips):
        x = 0
        for segment in (seg for strip in line for seg in strip):
            start, x = x, x + len(segment.text)
            if region is not None and not (region.y <= y < region.bottom and region.x <= start < region.right):
                continue  # the dimmed screen behind a dialog is meant to recede
            if all(ch in GRAPHICS for ch in segment.text):
                continue
            style = segment.style
            if (style is None or style.color is None or style.bgcolor is None
                    or style.color.is_default or style.bgcolor.is_default):
                found.append((y, segment.text.strip(), 0.0))  # the terminal's own colours
                continue
            ratio = contrast(style.color, style.bgcolor)
            if ratio < floor:
                found.append((y, segment.text.strip(), round(ratio, 2)))
    return found
