"""Generated training images that fight the dev corpus's shortcuts, made from dev images by our own code.

- screenshot: a dev illustration or photo shown inside an app interface we draw (phone feed post, desktop
  browser/viewer, game HUD, visual-novel text box). A capture of a post that shows artwork is a
  screenshot, so interface chrome, not the picture inside, must decide.
- illustration: dev illustrations off their white backgrounds (colour fields, gradients), zoomed in, and
  laid out as comic pages with speech balloons, so "text on it" alone does not mean screenshot.

Every generated image records the origins of the dev images it was made from, so leave-one-origin-out
validation can drop it from the fold that holds those origins out.

    nice -n 10 python -m research.synth --count 240
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from classifier.preprocess import load_rgb_frames
from research.corpus import CorpusImage, read_manifest

OUT_DIR = Path(__file__).resolve().parent / "out" / "synth"
# Generated sets: "ui" (interfaces around art, comic pages, art off white) and "stylised" (painted photos).
SETS = ("ui", "stylised")
SYLLABLES = ("ka", "ri", "to", "mel", "an", "so", "vi", "ne", "lu", "pra", "dor", "ex", "im", "qua", "te", "ob")


@dataclass(frozen=True)
class Generated:
    file: str
    label: str
    kind: str
    sources: tuple[str, ...]  # origin groups of the dev images inside


def words(rng: random.Random, count: int) -> str:
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(count))


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def fit_inside(image: Image.Image, width: int, height: int) -> Image.Image:
    scale = min(width / image.width, height / image.height)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


def cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height and crop the centre (a full-bleed background)."""
    scale = max(width / image.width, height / image.height)
    scaled = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BILINEAR
    )
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def text_lines(
    draw: ImageDraw.ImageDraw, rng: random.Random, x: int, y: int, width: int, lines: int, size: int, colour
) -> int:
    face = font(size)
    for _ in range(lines):
        line = words(rng, rng.randint(3, 9))
        while face.getlength(line) > width and " " in line:
            line = line.rsplit(" ", 1)[0]
        draw.text((x, y), line, fill=colour, font=face)
        y += int(size * 1.45)
    return y


def icon_row(draw: ImageDraw.ImageDraw, rng: random.Random, x: int, y: int, width: int, size: int, colour) -> None:
    count = rng.randint(3, 5)
    for index in range(count):
        left = x + index * width // count
        shape = rng.choice(("circle", "square", "heart"))
        box = (left, y, left + size, y + size)
        if shape == "circle":
            draw.ellipse(box, outline=colour, width=2)
        elif shape == "square":
            draw.rounded_rectangle(box, radius=size // 4, outline=colour, width=2)
        else:
            draw.polygon(
                [(left + size / 2, y + size), (left, y + size / 3), (left + size / 2, y), (left + size, y + size / 3)],
                outline=colour,
            )
        draw.text((left + size + 6, y), str(rng.randint(1, 999)), fill=colour, font=font(max(10, size - 4)))


def theme(rng: random.Random):
    if rng.random() < 0.5:
        return {"bg": (255, 255, 255), "fg": (20, 20, 25), "muted": (110, 115, 125), "bar": (245, 246, 248)}
    return {"bg": (16, 18, 22), "fg": (235, 235, 240), "muted": (140, 145, 155), "bar": (28, 30, 36)}


def phone_post(content: Image.Image, rng: random.Random) -> Image.Image:
    """A social app's post as a phone captures it: status bar, header, avatar, text, picture, actions."""
    width, height = 540, rng.choice((1170, 1110, 960))
    colours = theme(rng)
    canvas = Image.new("RGB", (width, height), colours["bg"])
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, width, 34), fill=colours["bar"])
    draw.text((16, 8), f"{rng.randint(0, 23)}:{rng.randint(0, 59):02d}", fill=colours["fg"], font=font(18))
    draw.rectangle((width - 60, 12, width - 24, 24), outline=colours["fg"], width=2)
    draw.rectangle((0, 34, width, 96), fill=colours["bg"])
    draw.text((64, 50), words(rng, 1).title(), fill=colours["fg"], font=font(26))
    draw.line((0, 96, width, 96), fill=colours["muted"])
    y = 110
    for _post in range(rng.randint(1, 2)):
        avatar = tuple(rng.randint(40, 220) for _ in range(3))
        draw.ellipse((16, y, 72, y + 56), fill=avatar)
        draw.text((84, y + 4), words(rng, 2).title(), fill=colours["fg"], font=font(20))
        draw.text((84, y + 30), "@" + words(rng, 1).replace(" ", "_"), fill=colours["muted"], font=font(17))
        y = text_lines(draw, rng, 84, y + 66, width - 100, rng.randint(1, 4), 19, colours["fg"])
        picture = fit_inside(content, width - 100, int(height * rng.uniform(0.35, 0.55)))
        canvas.paste(picture, (84, y + 8))
        y += picture.height + 20
        icon_row(draw, rng, 84, y, width - 100, 22, colours["muted"])
        y += 44
        draw.line((0, y, width, y), fill=colours["muted"])
        y += 14
        if y > height - 300:
            break
    draw.rectangle((0, height - 64, width, height), fill=colours["bar"])
    icon_row(draw, rng, 30, height - 46, width - 40, 26, colours["fg"])
    return canvas


def desktop_viewer(content: Image.Image, rng: random.Random) -> Image.Image:
    """A desktop browser or image viewer window showing the picture, with tabs, toolbar and side panel."""
    width, height = rng.choice(((1366, 768), (1280, 800), (1920, 1080)))
    colours = theme(rng)
    canvas = Image.new("RGB", (width, height), colours["bg"])
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, width, 40), fill=colours["bar"])
    for tab in range(rng.randint(2, 6)):
        left = 8 + tab * 200
        draw.rounded_rectangle(
            (left, 6, left + 190, 40),
            radius=8,
            fill=colours["bg"] if tab == 0 else colours["bar"],
            outline=colours["muted"],
        )
        draw.text((left + 12, 14), words(rng, 2), fill=colours["fg"], font=font(16))
    draw.rounded_rectangle((90, 48, width - 200, 80), radius=14, fill=colours["bar"])
    draw.text(
        (110, 54),
        "https://" + words(rng, 1).replace(" ", "") + ".example/" + words(rng, 1).replace(" ", "/"),
        fill=colours["muted"],
        font=font(17),
    )
    icon_row(draw, rng, 10, 52, 70, 20, colours["muted"])
    side = rng.choice((0, 260, 320))
    if side:
        draw.rectangle((0, 90, side, height), fill=colours["bar"])
        text_lines(draw, rng, 16, 110, side - 30, rng.randint(6, 16), 16, colours["fg"])
    picture = fit_inside(content, width - side - 80, height - 170)
    canvas.paste(picture, (side + (width - side - picture.width) // 2, 100))
    text_lines(draw, rng, side + 40, min(height - 60, 110 + picture.height), width - side - 80, 2, 17, colours["fg"])
    return canvas


def game_hud(background: Image.Image, rng: random.Random) -> Image.Image:
    """Gameplay or visual-novel screen: art fills the screen, HUD bars, score, buttons, a text box."""
    width, height = rng.choice(((1280, 720), (1920, 1080), (720, 1280)))
    canvas = cover(background, width, height).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    accent = tuple(rng.randint(60, 255) for _ in range(3))
    for bar in range(rng.randint(1, 3)):
        top = 20 + bar * 34
        draw.rounded_rectangle(
            (20, top, 320, top + 24), radius=10, fill=(0, 0, 0, 150), outline=(255, 255, 255, 220), width=2
        )
        draw.rounded_rectangle((22, top + 2, 22 + rng.randint(40, 296), top + 22), radius=9, fill=accent + (255,))
    draw.text(
        (width - 300, 20),
        f"{words(rng, 1).upper()} {rng.randint(0, 999999):06d}",
        fill=(255, 255, 255, 255),
        font=font(30),
        stroke_width=2,
        stroke_fill=(0, 0, 0, 255),
    )
    for button in range(rng.randint(2, 5)):
        left = width - 110 - button * 100
        draw.ellipse(
            (left, height - 110, left + 80, height - 30), fill=(20, 20, 30, 170), outline=(255, 255, 255, 230), width=3
        )
    if rng.random() < 0.6:
        box_top = int(height * rng.uniform(0.68, 0.76))
        draw.rounded_rectangle(
            (30, box_top, width - 30, height - 130 if height > 1000 else height - 20),
            radius=16,
            fill=(10, 10, 30, 190),
            outline=accent + (255,),
            width=3,
        )
        draw.text((60, box_top + 14), words(rng, 1).title(), fill=accent + (255,), font=font(28))
        text_lines(draw, rng, 60, box_top + 56, width - 120, 2, 24, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, layer).convert("RGB")


def white_background_mask(image: Image.Image, work_side: int = 256) -> np.ndarray:
    """Near-white pixels connected to the border (the blank page an artwork sits on), as a bool array."""
    small = image.convert("L")
    small.thumbnail((work_side, work_side))
    near_white = np.asarray(small, dtype=np.int16) > 240
    reached = np.zeros_like(near_white)
    reached[0], reached[-1], reached[:, 0], reached[:, -1] = (
        near_white[0],
        near_white[-1],
        near_white[:, 0],
        near_white[:, -1],
    )
    while True:  # grow from the border through near-white pixels until nothing changes
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= near_white
        if np.array_equal(grown, reached):
            break
        reached = grown
    mask = Image.fromarray((reached * 255).astype(np.uint8), "L").resize(image.size, Image.NEAREST)
    return np.asarray(mask) > 127


def backdrop(size: tuple[int, int], rng: random.Random) -> Image.Image:
    width, height = size
    first = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    second = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(0, 1, height if rng.random() < 0.5 else width, dtype=np.float32)
    if len(ramp) == height:
        grid = np.repeat(ramp[:, None], width, axis=1)
    else:
        grid = np.repeat(ramp[None, :], height, axis=0)
    pixels = first * (1 - grid[..., None]) + second * grid[..., None]
    return Image.fromarray(pixels.astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(2))


def off_white(artwork: Image.Image, rng: random.Random) -> Image.Image:
    """The artwork on a colour gradient instead of its white page, sometimes zoomed in."""
    mask = white_background_mask(artwork)
    result = artwork.copy()
    if mask.mean() > 0.05:
        result.paste(backdrop(artwork.size, rng), mask=Image.fromarray((mask * 255).astype(np.uint8), "L"))
    if rng.random() < 0.5:
        width, height = result.size
        scale = rng.uniform(0.55, 0.85)
        crop_w, crop_h = int(width * scale), int(height * scale)
        left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
        result = result.crop((left, top, left + crop_w, top + crop_h))
    return result


def comic_page(panels: list[Image.Image], rng: random.Random) -> Image.Image:
    """Panels in black frames on a page, with speech balloons: an illustration that carries text."""
    width, height = rng.choice(((800, 1131), (1000, 700), (900, 900)))
    page = Image.new("RGB", (width, height), (255, 255, 255) if rng.random() < 0.7 else (235, 228, 210))
    draw = ImageDraw.Draw(page)
    rows = 2 if len(panels) > 2 else 1
    per_row = [panels[i::rows] for i in range(rows)]
    gutter = 16
    row_height = (height - gutter * (rows + 1)) // rows
    for row, row_panels in enumerate(per_row):
        cell_width = (width - gutter * (len(row_panels) + 1)) // len(row_panels)
        for column, panel in enumerate(row_panels):
            left, top = gutter + column * (cell_width + gutter), gutter + row * (row_height + gutter)
            page.paste(cover(panel, cell_width, row_height), (left, top))
            draw.rectangle((left, top, left + cell_width, top + row_height), outline=(0, 0, 0), width=4)
            if rng.random() < 0.8:
                bubble_w, bubble_h = int(cell_width * rng.uniform(0.35, 0.6)), int(row_height * rng.uniform(0.18, 0.3))
                bx, by = left + rng.randint(8, max(9, cell_width - bubble_w - 8)), top + 10
                draw.ellipse((bx, by, bx + bubble_w, by + bubble_h), fill=(255, 255, 255), outline=(0, 0, 0), width=3)
                draw.polygon(
                    [
                        (bx + bubble_w // 3, by + bubble_h - 4),
                        (bx + bubble_w // 2, by + bubble_h - 4),
                        (bx + bubble_w // 3, by + bubble_h + 24),
                    ],
                    fill=(255, 255, 255),
                    outline=(0, 0, 0),
                )
                face = font(max(12, bubble_h // 6))
                for line in range(2):
                    draw.text(
                        (bx + bubble_w // 6, by + bubble_h // 4 + line * int(face.size * 1.3)),
                        words(rng, 2).upper(),
                        fill=(0, 0, 0),
                        font=face,
                    )
    return page


def painted(photo: Image.Image, rng: random.Random) -> Image.Image:
    """A photo turned into flat brush-like patches (mode filter) with boosted colour: a digital painting."""
    small = fit_inside(photo, 512, 512)
    strokes = small.filter(ImageFilter.ModeFilter(rng.choice((5, 7, 9))))
    return ImageEnhance.Color(strokes).enhance(rng.uniform(1.1, 1.6))


def cartoon(photo: Image.Image, rng: random.Random) -> Image.Image:
    """A photo as cel-shaded art: smoothed, reduced to a few flat colours, dark outlines on the edges."""
    small = fit_inside(photo, 512, 512).filter(ImageFilter.MedianFilter(5))
    flat = small.quantize(colors=rng.randint(6, 16), method=Image.Quantize.MEDIANCUT).convert("RGB")
    edges = np.asarray(small.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.int16) > rng.randint(24, 40)
    pixels = np.asarray(flat).copy()
    pixels[edges] = (20, 20, 20)
    return Image.fromarray(pixels, "RGB")


def generate(
    images: list[CorpusImage], count_per_kind: int, seed: int = 0, generated_set: str = "ui"
) -> list[Generated]:
    rng = random.Random(seed)
    by_label = {label: [image for image in images if image.label == label] for label in ("illustration", "photo")}
    set_dir(generated_set).mkdir(parents=True, exist_ok=True)
    generated: list[Generated] = []

    def pick(label: str) -> tuple[Image.Image, str]:
        # Sample origins uniformly first, so the giant origins do not fill the generated set too.
        origins = sorted({image.origin for image in by_label[label]})
        origin = rng.choice(origins)
        chosen = rng.choice([image for image in by_label[label] if image.origin == origin])
        return load_rgb_frames(chosen.path, max_frames=1)[0], origin

    def save(image: Image.Image, label: str, kind: str, sources: list[str]) -> None:
        name = f"{kind}_{len(generated):04d}.jpg"
        image.save(set_dir(generated_set) / name, quality=rng.randint(75, 95))
        generated.append(Generated(name, label, kind, tuple(sorted(set(sources)))))

    for _ in range(count_per_kind if generated_set == "stylised" else 0):
        photo, origin = pick("photo")
        save(painted(photo, rng), "illustration", "painted_photo", [origin])
        photo, origin = pick("photo")
        save(cartoon(photo, rng), "illustration", "cartoon_photo", [origin])
    for _ in range(count_per_kind if generated_set == "ui" else 0):
        content, origin = pick(rng.choice(("illustration", "illustration", "photo")))
        save(phone_post(content, rng), "screenshot", "phone_post", [origin])
        content, origin = pick(rng.choice(("illustration", "photo")))
        save(desktop_viewer(content, rng), "screenshot", "desktop_viewer", [origin])
        background, origin = pick("illustration")
        save(game_hud(background, rng), "screenshot", "game_hud", [origin])
        artwork, origin = pick("illustration")
        save(off_white(artwork, rng), "illustration", "off_white", [origin])
        panels = [pick("illustration") for _ in range(rng.randint(2, 4))]
        save(comic_page([panel for panel, _ in panels], rng), "illustration", "comic_page", [o for _, o in panels])
    (set_dir(generated_set) / "generated.json").write_text(json.dumps([asdict(item) for item in generated], indent=1))
    return generated


def set_dir(generated_set: str) -> Path:
    if generated_set not in SETS:
        raise ValueError(f"unknown generated set {generated_set!r}; known: {SETS}")
    return OUT_DIR if generated_set == "ui" else OUT_DIR.parent / f"synth_{generated_set}"


def read_generated(generated_set: str = "ui") -> list[Generated]:
    rows = json.loads((set_dir(generated_set) / "generated.json").read_text())
    return [Generated(row["file"], row["label"], row["kind"], tuple(row["sources"])) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48, help="images per generator (5 generators)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="generated_set", choices=SETS, default="ui")
    args = parser.parse_args()
    generated = generate(read_manifest(), args.count, args.seed, args.generated_set)
    print(f"wrote {len(generated)} images to {set_dir(args.generated_set)}")


if __name__ == "__main__":
    main()
