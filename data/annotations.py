"""Parses ImageNet bounding-box XML (PASCAL VOC style) into normalized boxes.

The XML comes from archives nobody here controls, so it is parsed with
defusedxml: entity expansion ("billion laughs"), external entities and DTDs
are refused with AnnotationError instead of eating memory or reading files.
A malformed annotation is the caller's to report; it must never cost the image.

Deliberately left out: object names other than as a validation label source,
and the ``difficult``/``truncated`` flags (ImageNet does not use them).
"""
import dataclasses
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
        return float(text.strip())
    except ValueError:
        raise AnnotationError(f"<{path}> should be a number, found {text.strip()!r}") from None


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
