"""Parses ImageNet bounding-box XML (PASCAL VOC style) into normalized boxes.

The XML comes from archives nobody here controls, so it is parsed with
defusedxml: entity expansion ("billion laughs"), external entities and DTDs
are refused with AnnotationError instead of eating memory or reading files.
A malformed annotation is the caller's to report; it must never cost the image.

Deliberately left out: object names other than as a validation label source,
and the ``difficult``/``truncated`` flags (ImageNet does not use them).
"""
import dataclasses
import math
import xml.etree.ElementTree

import defusedxml
import defusedxml.ElementTree


class AnnotationError(ValueError):
    """The annotation XML is malformed, unsafe or lacks a usable field."""


@dataclasses.dataclass(frozen=True)
class Annotation:
    """Boxes in pixels as (xmin, ymin, xmax, ymax), with the size they refer to.

    ``width``/``height`` are 0 when the XML gives no usable size; the image's
    own size is then used to normalize.
    """

    width: int
    height: int
    boxes: tuple
    names: tuple  # the synset of each object, in the order of ``boxes``


def _number(element, path):
    text = element.findtext(path)
    if text is None:
        raise AnnotationError(f"missing <{path}>")
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise AnnotationError(f"<{path}> should be a finite number, found {text.strip()[:40]!r}")
    return value


def _size(root):
    size = root.find("size")
    if size is None:
        return 0, 0
    try:
        width, height = int(_number(size, "width")), int(_number(size, "height"))
    except AnnotationError:
        return 0, 0
    return (width, height) if width > 0 and height > 0 else (0, 0)


def parse(data):
    """Parses one annotation XML document (bytes); raises AnnotationError."""
    try:
        root = defusedxml.ElementTree.fromstring(data)
    except defusedxml.DefusedXmlException as error:
        raise AnnotationError(f"unsafe XML refused ({type(error).__name__})") from None
    except xml.etree.ElementTree.ParseError as error:
        raise AnnotationError(f"malformed XML: {error}") from None
    except (LookupError, ValueError) as error:  # an unknown or unsupported declared encoding
        raise AnnotationError(f"XML in an encoding that cannot be read: {error}") from None
    boxes, names = [], []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        boxes.append(tuple(_number(box, key) for key in ("xmin", "ymin", "xmax", "ymax")))
        names.append((obj.findtext("name") or "").strip())
    width, height = _size(root)
    return Annotation(width, height, tuple(boxes), tuple(names))


def normalized_boxes(annotation, image_width, image_height):
    """Boxes as (ymin, xmin, ymax, xmax) in [0, 1], the order tfds.features.BBox wants.

    Boxes are clipped to the image; boxes that are empty after clipping are
    dropped, as they cannot be cropped from in training.
    """
    width = annotation.width or image_width
    height = annotation.height or image_height
    result = []
    for xmin, ymin, xmax, ymax in annotation.boxes:
        xmin, xmax = sorted((min(max(xmin / width, 0.0), 1.0), min(max(xmax / width, 0.0), 1.0)))
        ymin, ymax = sorted((min(max(ymin / height, 0.0), 1.0), min(max(ymax / height, 0.0), 1.0)))
        if xmax > xmin and ymax > ymin:
            result.append((ymin, xmin, ymax, xmax))
    return result


def of_synset(annotation, synset):
    """(annotation with only the objects named ``synset`` or unnamed, number of objects dropped).

    An image's XML can also box objects of other synsets (a kit fox next to a
    sheepdog); as in Inception's box processing, only the image's own synset
    is kept, so a crop from any stored box shows the labelled object.
    """
    kept = [(box, name) for box, name in zip(annotation.boxes, annotation.names) if not name or name == synset]
    dropped = len(annotation.boxes) - len(kept)
    if not dropped:
        return annotation, 0
    return dataclasses.replace(annotation, boxes=tuple(b for b, _ in kept), names=tuple(n for _, n in kept)), dropped


def reversed_corners(annotation):
    """How many boxes give their corners the wrong way round (xmin > xmax or ymin > ymax); they are swapped."""
    return sum(1 for xmin, ymin, xmax, ymax in annotation.boxes if xmin > xmax or ymin > ymax)
